#!/usr/bin/env python3
"""`perf script` output on stdin -> folded stacks on stdout ("comm;outer;...;inner count"),
the input of inferno-flamegraph or flamegraph.pl.

With --inclusive FILE (folded stacks), prints instead the frames with the largest inclusive
share (the share of samples whose stack contains them), per thread name: what a flame graph
shows as its widest towers. Used by scripts/profile.sh; findings in BENCHMARKS.md.
"""
import collections
import os
import re
import sys

# Rust symbol hashes and generic noise make the same function look like many.
HASH = re.compile(r"::h[0-9a-f]{16}$")


def frames(lines):
    comm, stack = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if comm is not None and stack:
                yield comm, stack
            comm, stack = None, []
        elif not line.startswith((" ", "\t")):
            comm = line.split()[0]
        else:
            parts = line.strip().split(" ", 1)
            sym = parts[1] if len(parts) > 1 else parts[0]
            sym = re.sub(r" \(.*\)$", "", sym)
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
            stack.append(HASH.sub("", sym).replace(";", ":"))
    if comm is not None and stack:
        yield comm, stack


def fold():
    counts = collections.Counter()
    for comm, stack in frames(sys.stdin):
        counts[";".join([comm] + stack[::-1])] += 1
    for k, v in counts.most_common():
        print(f"{k} {v}")


def inclusive(path, top=25):
    total, per = 0, collections.Counter()
    for line in open(path):
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        total += n
        for f in set(stack.split(";")[1:]):
            per[f] += n
    for f, n in per.most_common(top):
        print(f"{100 * n / total:6.2f}%  {f[:150]}")


def flat(roles, top=30):
    """`perf script -F pid,tid,comm,dso,sym` on stdin (no call graphs): the share of samples
    by role (pid -> name in `roles`, "pid=name,..."), by role and thread name, and the
    hottest symbols by role."""
    names = dict(r.split("=") for r in roles.split(","))
    role_of = lambda pid: names.get(pid, pid)
    by_role, by_thread, by_sym, by_dso = (collections.Counter() for _ in range(4))
    total = 0
    for line in sys.stdin:
        m = re.match(r"\s*(\S+)\s+(\d+)/(\d+)\s+(.*)$", line.rstrip("\n"))
        if not m:
            continue
        comm, pid, rest = m.group(1), m.group(2), m.group(4)
        sym = re.sub(r"^[0-9a-f]+\s+", "", rest.strip())
        dso = re.search(r"\(([^()]*)\)$", sym)
        dso = os.path.basename(dso.group(1)) if dso else "?"
        sym = HASH.sub("", re.sub(r"\+0x[0-9a-f]+", "", re.sub(r"\s*\([^()]*\)$", "", sym)))
        by_dso[(role_of(pid), dso)] += 1
        role = role_of(pid)
        total += 1
        by_role[role] += 1
        by_thread[(role, comm)] += 1
        by_sym[(role, sym)] += 1
    if not total:
        print("no samples")
        return
    pct = lambda n: f"{100 * n / total:6.2f}%"
    print(f"## share of all {total} samples by process")
    for r, n in by_role.most_common():
        print(f"{pct(n)}  {r}")
    print("\n## by process and object (kernel, the program, libc...)")
    for (r, d), n in by_dso.most_common(16):
        print(f"{pct(n)}  {r:<12} {d}")
    print("\n## by process and thread name")
    for (r, c), n in by_thread.most_common(12):
        print(f"{pct(n)}  {r:<12} {c}")
    print(f"\n## hottest symbols (self), by process")
    for (r, sy), n in by_sym.most_common(top):
        print(f"{pct(n)}  {r:<12} {sy[:140]}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--flat":
        flat(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "--inclusive":
        inclusive(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 25)
    else:
        fold()
