#!/usr/bin/env bash
# First throughput/latency figures of a local 3-node cluster (started by `just cluster-up`),
# next to the floors measured on the same machine in the same run: one NATS request-reply
# (echo responder) and one 4 KiB append + fdatasync. Each row is the median of REPS runs.
# Usage: scripts/bench-core.sh [SECONDS_PER_RUN] [REPS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-5}"
reps="${2:-3}"
bin=target/release/concord
[[ -x "$bin" ]] || { echo "build first: cargo build --release" >&2; exit 1; }
"$bin" cluster status --json >/dev/null || { echo "no cluster answers: run just cluster-up" >&2; exit 1; }

out=$(mktemp)
run() { # name, then bench args
    local name="$1"; shift
    for _ in $(seq "$reps"); do
        printf '%s\t' "$name" >>"$out"
        "$bin" bench --json --duration "${secs}s" "$@" >>"$out"
    done
    echo "  done: $name" >&2
}

"$bin" bench --json --target fsync --fsync-dir data --ops 2000 | sed 's/^/fsync floor (4 KiB + fdatasync)\t/' >>"$out"
run "NATS request-reply floor, 1 client" --target echo --clients 1
run "NATS request-reply floor, 64 clients" --target echo --clients 64
run "put, 1 client" --clients 1 --mix put=100
run "put, 16 clients" --clients 16 --mix put=100
run "put, 64 clients" --clients 64 --mix put=100
run "put, 256 clients" --clients 256 --mix put=100
run "linearizable get, 1 client" --clients 1 --mix get=100
run "linearizable get, 64 clients" --clients 64 --mix get=100
run "linearizable get, 256 clients" --clients 256 --mix get=100
run "stale get, 64 clients" --clients 64 --mix get=100 --consistency stale
run "90/10 get/put, 64 clients" --clients 64 --mix get=90,put=10

python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    name, js = line.rstrip("\n").split("\t", 1)
    if name not in rows:
        rows[name] = []
        order.append(name)
    rows[name].append(json.loads(js))
print("| workload | ops/s | p50 ms | p99 ms | errors |")
print("| --- | ---: | ---: | ---: | --- |")
for name in order:
    runs = rows[name]
    med = lambda f: statistics.median(f(r) for r in runs)
    errs = {}
    for r in runs:
        for k, v in r["errors"].items():
            errs[k] = errs.get(k, 0) + v
    print(f"| {name} | {med(lambda r: r['ops_per_sec']):,.0f} | {med(lambda r: r['latency_us']['p50'])/1000:.2f} "
          f"| {med(lambda r: r['latency_us']['p99'])/1000:.2f} | {errs or '-'} |")
PY
rm -f "$out"
