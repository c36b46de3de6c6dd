#!/usr/bin/env bash
# scripts/bench-telemetry.sh — what observability costs: puts at 64 clients on a fresh 3-node
# cluster (release build, private nats-server on loopback), with
#   off      telemetry.enabled=false and no metrics listener
#   metrics  telemetry.enabled=false, metrics listener on (what the Prometheus metrics cost)
#   default  the built-in telemetry defaults, metrics listener on
#   all      telemetry.api_events=all, telemetry.apply_events=all, metrics listener on
#   watched  as all, with a subscriber (`concord watch-telemetry --json`) taking every event
#            (it runs on the same cores, so this is an upper bound)
# Variants alternate within each round so drift on a shared machine hits them all alike.
# Use: scripts/bench-telemetry.sh [OUT_DIR]   (SECS=5 ROUNDS=3 VARIANTS="off default all";
#      any of off metrics default all watched)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source scripts/tools.sh

OUT="${1:-$(mktemp -d /tmp/concord-bench-telemetry.XXXXXX)}"
SECS="${SECS:-5}"
ROUNDS="${ROUNDS:-3}"
VARIANTS="${VARIANTS:-off default all}"
PORT="${PORT:-14997}"
METRICS_PORT="${METRICS_PORT:-19470}"
BIN="$ROOT/target/release/concord"
mkdir -p "$OUT"
cargo build --release --quiet

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
bench_start_nats "$OUT" "$PORT"
export CONCORD_NATS__URL="nats://127.0.0.1:$PORT" CONCORD_NATS__SUBJECT_PREFIX=benchtel
export CONCORD_TIMEOUT_MS=10000

# run VARIANT: one fresh cluster, one bench run appended to results.tsv
run() {
    local variant=$1 env=()
    case "$variant" in
        off | metrics) env=(CONCORD_TELEMETRY__ENABLED=false) ;;
        default) env=(CONCORD_TELEMETRY__ENABLED=true) ;;
        all | watched) env=(CONCORD_TELEMETRY__ENABLED=true CONCORD_TELEMETRY__API_EVENTS=all
                  CONCORD_TELEMETRY__APPLY_EVENTS=all) ;;
        *) echo "bench-telemetry: unknown variant $variant" >&2; exit 2 ;;
    esac
    for i in 1 2 3; do
        local v="BENCH_NODE_ENV_$i"
        if [[ "$variant" != off ]]; then
            printf -v "$v" 'CONCORD_METRICS__LISTEN=127.0.0.1:%s' "$((METRICS_PORT + i))"
        else
            printf -v "$v" ''
        fi
    done
    bench_start_cluster "$OUT" "${env[@]}"
    local watcher=""
    if [[ "$variant" == watched ]]; then
        "$BIN" watch-telemetry --json >"$OUT/watched.jsonl" 2>/dev/null &
        watcher=$!
        sleep 0.5
    fi
    printf '%s\t' "$variant" >>"$OUT/results.tsv"
    "$BIN" bench --json --duration "${SECS}s" --clients 64 --mix put=100 \
        --cpu-pids "$bench_cpids" >>"$OUT/results.tsv"
    if [[ -n "$watcher" ]]; then
        kill -INT "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
        echo "  watcher got $(wc -l <"$OUT/watched.jsonl") events" >&2
    fi
    if [[ "$variant" != off && "$variant" != metrics ]]; then
        # What the nodes published and dropped during the run.
        for i in 1 2 3; do
            curl -s "http://127.0.0.1:$((METRICS_PORT + i))/metrics" \
                | grep '^concord_telemetry_events_total' | sed "s/^/  node $i: /" >&2 || true
        done
    fi
    bench_stop_cluster
}

: >"$OUT/results.tsv"
for r in $(seq "$ROUNDS"); do
    for v in $VARIANTS; do
        echo "bench-telemetry: round $r, $v" >&2
        run "$v"
    done
done

VARIANTS="$VARIANTS" python3 - "$OUT/results.tsv" <<'PY' | tee "$OUT/summary.md"
import json, os, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    v, js = line.rstrip("\n").split("\t", 1)
    rows.setdefault(v, []).append(json.loads(js))
variants = [v for v in os.environ["VARIANTS"].split() if v in rows]
base = statistics.median(r["ops_per_sec"] for r in rows["off"]) if "off" in rows else None
print("| variant | puts/s @64 (runs) | median | vs off | p99 ms (median) | CPU s / 10k ops | errors |")
print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
for v in variants:
    rs = rows[v]
    ops = [r["ops_per_sec"] for r in rs]
    med = statistics.median(ops)
    p99 = statistics.median(r["latency_us"]["p99"] / 1000 for r in rs)
    cpu = statistics.median((r.get("cpu_seconds_per_10k_ops") or 0) for r in rs)
    errs = sum(sum(r["errors"].values()) if isinstance(r["errors"], dict) else 0 for r in rs)
    vs = f"{med/base:.2f}x" if base else "-"
    print(f"| {v} | {', '.join(f'{x:,.0f}' for x in ops)} | {med:,.0f} | {vs} | {p99:.2f} | {cpu:.3f} | {errs} |")
PY
