#!/usr/bin/env python3
"""`perf script` output on stdin -> folded stacks on stdout ("comm;outer;...;inner count"),
the input of inferno-flamegraph or flamegraph.pl.

With --inclusive FILE (folded stacks), prints instead the frames with the largest inclusive
share (the share of samples whose stack contains them), per thread name: what a flame graph
shows as its widest towers. Used by scripts/profile.sh; findings in BENCHMARKS.md.
"""
import collections
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


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--inclusive":
        inclusive(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 25)
    else:
        fold()
