#!/usr/bin/env python3
"""scripts/layout-check.py — keeps the source layout as src/lib.rs describes it (run by `just lint`).

Checks, over src/ and crates/*/src (tests excluded: `tests.rs`, `golden.rs`, files under a `tests/` module dir, and everything from a
`#[cfg(test)]` line to the end of a file):
  - no import circle between the top-level modules of a crate (`crate::a` used in b and back);
  - `store` imports neither `api` nor `raft`;
  - no file over MAX_FILE_LINES lines, no function over MAX_FN_LINES lines (the fault checker's
    search is exempt: it is one loop whose parts share its state).
Prints each finding and exits 1 if there is any. A rough lexer, not a Rust parser: it skips
comments and string literals, which is enough for this code base's brace counting.
"""
import collections
import os
import re
import sys

MAX_FILE_LINES = 800
MAX_FN_LINES = 100
FN_EXEMPT = {("crates/check/src/linearizable", "search")}
TEST_FILES = {"tests.rs", "golden.rs"}
FORBIDDEN = {("store", "api"), ("store", "raft"), ("store", "watch"), ("api", "watch")}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FN_RE = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def is_test_file(path):
    """Unit-test modules: `tests.rs`, `golden.rs`, or any file under a `tests/` module dir."""
    return os.path.basename(path) in TEST_FILES or f"{os.sep}tests{os.sep}" in path


def rust_files(src):
    for d, _, names in os.walk(src):
        for n in sorted(names):
            if n.endswith(".rs"):
                yield os.path.join(d, n)


def non_test_code(path):
    """The file's lines up to its first `#[cfg(test)]` (unit tests sit at the end)."""
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]"):
            return lines[:i]
    return lines


def strip(line, state):
    """The line without comments and string contents; `state` carries open ones across lines."""
    out, i, n = [], 0, len(line)
    while i < n:
        if state["block"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["block"], i = False, j + 2
            continue
        if state["str"]:
            if line[i] == "\\":
                i += 2
                continue
            if line[i] == '"':
                state["str"] = False
            i += 1
            continue
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"], i = True, i + 2
            continue
        ch = line[i]
        if ch == '"':
            state["str"], i = True, i + 1
            continue
        if ch == "'" and i + 2 < n and (line[i + 2] == "'" or line[i + 1] == "\\"):
            k = line.find("'", i + 3 if line[i + 1] == "\\" else i + 2)
            i = k + 1 if k > 0 else n
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def long_functions(path, rel):
    state = {"block": False, "str": False}
    stack, depth, pending = [], 0, None
    for no, raw in enumerate(non_test_code(path), 1):
        code = strip(raw, state)
        m = FN_RE.match(raw)
        if m and not state["block"]:
            pending = (m.group(6), no)
        for ch in code:
            if ch == "{":
                depth += 1
                if pending:
                    stack.append((pending[0], pending[1], depth))
                    pending = None
            elif ch == "}":
                if stack and stack[-1][2] == depth:
                    name, start, _ = stack.pop()
                    length = no - start + 1
                    module = os.path.splitext(rel)[0].removesuffix("/mod")
                    exempt = any(module.startswith(m) and name == f for m, f in FN_EXEMPT)
                    if length > MAX_FN_LINES and not exempt:
                        yield f"{rel}:{start}: fn {name} is {length} lines (max {MAX_FN_LINES})"
                depth -= 1
            elif ch == ";" and pending:
                pending = None  # a declaration without a body


def import_findings(src, crate_label):
    edges, seen_in = collections.defaultdict(set), {}
    for path in rust_files(src):
        rel = os.path.relpath(path, src)
        if is_test_file(path) or rel in ("main.rs", "lib.rs"):
            continue
        top = rel.split(os.sep)[0].removesuffix(".rs")
        for m in re.finditer(r"crate::([a-z_]+)", "\n".join(non_test_code(path))):
            if m.group(1) != top:
                edges[top].add(m.group(1))
                seen_in.setdefault((top, m.group(1)), os.path.relpath(path, ROOT))
    for a, b in sorted(FORBIDDEN):
        if b in edges.get(a, ()):
            yield f"{seen_in[(a, b)]}: `{a}` must not import `{b}`"
    # Tarjan's strongly connected components: any with two or more modules is a circle.
    index, low, stack, on, counter = {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                yield from visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                links = [f"{a} -> {b} ({seen_in[(a, b)]})"
                         for a in sorted(comp) for b in sorted(comp) if b in edges.get(a, ())]
                yield f"{crate_label}: import circle among {sorted(comp)}: " + "; ".join(links)

    for v in sorted(edges):
        if v not in index:
            yield from visit(v)


def main():
    sources = [("src", "concord")]
    crates = os.path.join(ROOT, "crates")
    for name in sorted(os.listdir(crates)) if os.path.isdir(crates) else []:
        sources.append((os.path.join("crates", name, "src"), name))
    findings = []
    for src_rel, label in sources:
        src = os.path.join(ROOT, src_rel)
        findings += import_findings(src, label)
        for path in rust_files(src):
            rel = os.path.relpath(path, ROOT)
            lines = sum(1 for _ in open(path, encoding="utf-8"))
            if lines > MAX_FILE_LINES:
                findings.append(f"{rel}: {lines} lines (max {MAX_FILE_LINES})")
            if not is_test_file(path):
                findings += long_functions(path, rel)
    for f in findings:
        print(f"layout-check: {f}")
    if findings:
        print("layout-check: see src/lib.rs for the layout these checks keep", file=sys.stderr)
        return 1
    print("layout-check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
