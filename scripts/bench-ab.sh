#!/usr/bin/env bash
# scripts/bench-ab.sh — two builds of the node, A and B, measured back to back on this machine:
# fresh 3-node clusters (private nats-server on loopback), the same load generator for both
# (BENCH_BIN), A and B back to back within each round (A first in odd rounds, B first in even
# ones) so drift on a shared machine hits both alike.
# Prints per-round ratios B/A and their median for each workload.
#
# Use: scripts/bench-ab.sh BIN_A BIN_B [OUT_DIR]
#      (SECS=5 ROUNDS=3; BENCH_BIN defaults to BIN_A; WORKLOADS="put64 get64 put1";
#      BENCH_ARGS_A / BENCH_ARGS_B: extra `concord bench` flags for one side only, e.g.
#      BENCH_ARGS_B=--ids scripts/bench-ab.sh BIN BIN  compares writes without and with ids)
#   put64  puts of 100 B at 64 clients          (throughput, higher is better)
#   get64  linearizable gets at 64 clients      (throughput, higher is better)
#   put1   puts at 1 client                     (p50 latency, lower is better)
#   put64k puts of 64 KiB at 16 clients         (throughput, higher is better)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source scripts/tools.sh

[[ $# -ge 2 ]] || { sed -n '2,14p' "$0" >&2; exit 2; }
BIN_A="$(realpath "$1")"
BIN_B="$(realpath "$2")"
OUT="${3:-$(mktemp -d /tmp/concord-bench-ab.XXXXXX)}"
SECS="${SECS:-5}"
ROUNDS="${ROUNDS:-3}"
WORKLOADS="${WORKLOADS:-put64 get64 put1}"
PORT="${PORT:-14996}"
BENCH_BIN="$(realpath "${BENCH_BIN:-$BIN_A}")"
mkdir -p "$OUT"

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
bench_start_nats "$OUT" "$PORT"
export CONCORD_NATS__URL="nats://127.0.0.1:$PORT" CONCORD_NATS__SUBJECT_PREFIX=benchab
export CONCORD_TIMEOUT_MS=10000

# run LABEL WORKLOAD: one fresh cluster of $BIN, one bench run appended to results.tsv
run() {
    local label=$1 workload=$2 args=() extra=()
    # Word-split on purpose: several flags may be given, e.g. "--ids --value-size 1000".
    if [[ $label == A ]]; then
        read -r -a extra <<<"${BENCH_ARGS_A:-}"
    else
        read -r -a extra <<<"${BENCH_ARGS_B:-}"
    fi
    case "$workload" in
        put64) args=(--clients 64 --mix put=100) ;;
        get64) args=(--clients 64 --mix get=100 --preload) ;;
        put1) args=(--clients 1 --mix put=100) ;;
        put64k) args=(--clients 16 --mix put=100 --value-size 65536) ;;
        *) echo "bench-ab: unknown workload $workload" >&2; exit 2 ;;
    esac
    bench_start_cluster "$OUT"
    printf '%s\t%s\t' "$label" "$workload" >>"$OUT/results.tsv"
    "$BENCH_BIN" bench --json --duration "${SECS}s" "${args[@]}" "${extra[@]}" \
        --cpu-pids "$bench_cpids" >>"$OUT/results.tsv"
    bench_stop_cluster
}

: >"$OUT/results.tsv"
for r in $(seq "$ROUNDS"); do
    for w in $WORKLOADS; do
        echo "bench-ab: round $r, $w" >&2
        # A first in odd rounds, B first in even ones: neither always gets the fresher disk.
        if ((r % 2)); then
            BIN="$BIN_A" run A "$w"
            BIN="$BIN_B" run B "$w"
        else
            BIN="$BIN_B" run B "$w"
            BIN="$BIN_A" run A "$w"
        fi
    done
done

echo "A: $BIN_A ${BENCH_ARGS_A:-}"
echo "B: $BIN_B ${BENCH_ARGS_B:-}"
python3 - "$OUT/results.tsv" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, workload, js = line.rstrip("\n").split("\t", 2)
    rows.setdefault(workload, {}).setdefault(label, []).append(json.loads(js))
print("| workload | measure | A per round | B per round | B/A per round | median B/A |")
print("| --- | --- | --- | --- | --- | ---: |")
for w, by in rows.items():
    latency = w == "put1"
    pick = (lambda r: r["latency_us"]["p50"] / 1000) if latency else (lambda r: r["ops_per_sec"])
    a = [pick(r) for r in by.get("A", [])]
    b = [pick(r) for r in by.get("B", [])]
    ratios = [y / x for x, y in zip(a, b) if x]
    fmt = (lambda v: f"{v:.3f}") if latency else (lambda v: f"{v:,.0f}")
    measure = "p50 ms" if latency else "ops/s"
    med = f"{statistics.median(ratios):.2f}" if ratios else "-"
    print(f"| {w} | {measure} | {', '.join(map(fmt, a))} | {', '.join(map(fmt, b))} | "
          f"{', '.join(f'{x:.2f}' for x in ratios)} | {med} |")
PY
