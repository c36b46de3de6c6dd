#!/usr/bin/env bash
# scripts/bench-security.sh — what auth and signing cost: puts and linearizable gets at 64
# clients on a fresh 3-node cluster (release build, private nats-server on loopback), with
#   off     no auth, no cluster.secret
#   auth    auth.enabled, every request carries a readwrite token
#   secret  cluster.secret (signed Raft RPCs and forwarded requests)
#   both    auth and secret
# Variants alternate within each round so drift on a shared machine hits them all alike.
# Use: scripts/bench-security.sh [OUT_DIR]   (SECS=5 ROUNDS=3 by default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source scripts/tools.sh

OUT="${1:-$(mktemp -d /tmp/concord-bench-security.XXXXXX)}"
SECS="${SECS:-5}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-14998}"
BIN="$ROOT/target/release/concord"
ADMIN="bench-admin-credential-0123456789"
SECRET="bench-cluster-secret-0123456789"
mkdir -p "$OUT"
cargo build --release --quiet

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
bench_start_nats "$OUT" "$PORT"
export CONCORD_NATS__URL="nats://127.0.0.1:$PORT" CONCORD_NATS__SUBJECT_PREFIX=benchsec
export CONCORD_TIMEOUT_MS=10000

# run VARIANT WORKLOAD: one fresh cluster, one bench run appended to results.tsv
run() {
    local variant=$1 workload=$2 env=() token=""
    case "$variant" in
        auth) env=(CONCORD_AUTH__ENABLED=true CONCORD_AUTH__ADMIN_TOKEN="$ADMIN") ;;
        secret) env=(CONCORD_CLUSTER__SECRET="$SECRET") ;;
        both) env=(CONCORD_AUTH__ENABLED=true CONCORD_AUTH__ADMIN_TOKEN="$ADMIN" CONCORD_CLUSTER__SECRET="$SECRET") ;;
    esac
    BENCH_STATUS_TOKEN="$ADMIN" bench_start_cluster "$OUT" "${env[@]}"
    if [[ "$variant" == auth || "$variant" == both ]]; then
        token=$("$BIN" --token "$ADMIN" --json token create --role readwrite \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    fi
    local mix="put=100" extra=()
    [[ "$workload" == get ]] && { mix="get=100"; extra=(--preload); }
    printf '%s\t%s\t' "$variant" "$workload" >>"$OUT/results.tsv"
    CONCORD_TOKEN="$token" "$BIN" bench --json --duration "${SECS}s" --clients 64 --mix "$mix" \
        "${extra[@]}" --cpu-pids "$bench_cpids" >>"$OUT/results.tsv"
    bench_stop_cluster
}

: >"$OUT/results.tsv"
for r in $(seq "$ROUNDS"); do
    for w in put get; do
        for v in off auth secret both; do
            echo "bench-security: round $r, $w, $v" >&2
            run "$v" "$w"
        done
    done
done

python3 - "$OUT/results.tsv" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    v, w, js = line.rstrip("\n").split("\t", 2)
    rows.setdefault((w, v), []).append(json.loads(js))
print("| workload | variant | ops/s (runs) | median | vs off | p99 ms (median) | CPU s / 10k ops | errors |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
for w in ["put", "get"]:
    base = statistics.median(r["ops_per_sec"] for r in rows[(w, "off")])
    for v in ["off", "auth", "secret", "both"]:
        rs = rows[(w, v)]
        ops = [r["ops_per_sec"] for r in rs]
        med = statistics.median(ops)
        p99 = statistics.median(r["latency_us"]["p99"] / 1000 for r in rs)
        cpu = statistics.median((r.get("cpu_seconds_per_10k_ops") or 0) for r in rs)
        errs = sum(sum(r["errors"].values()) if isinstance(r["errors"], dict) else 0 for r in rs)
        print(f"| {w} @64 | {v} | {', '.join(f'{x:,.0f}' for x in ops)} | {med:,.0f} | {med/base:.2f}x | {p99:.2f} | {cpu:.3f} | {errs} |")
PY
