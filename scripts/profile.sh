#!/usr/bin/env bash
# scripts/profile.sh — where a fresh 3-node release cluster spends its CPU under one
# `concord bench` load: `perf record` samples every process of the cluster (3 nodes and their
# nats-server) for PERF_SECS in the middle of the run, then prints the share of samples by
# process, by thread name, and the hottest symbols of each process, and the bytes each process's
# threads wrote to disk per op over the run (/proc/PID/task/TID/io). With CALL_GRAPH=1 it also
# writes folded stacks (for a flame graph: inferno-flamegraph or flamegraph.pl) of all
# processes to OUT_DIR/<name>.folded.
#
# Use:  scripts/profile.sh NAME [concord bench args...]
#   e.g. scripts/profile.sh put1 --clients 1 --mix put=100
#        scripts/profile.sh put64 --clients 64 --mix put=100
#        scripts/profile.sh put64k --clients 16 --mix put=100 --value-size 65536
# Environment: SECS=8 (the bench run), PERF_SECS=4 (sampled from second 2), FREQ=499 (Hz),
#   CALL_GRAPH=1 (DWARF call graphs; slower to record and to report), OUT_DIR=data/profile,
#   NO_BUILD=1 (use target/release/concord as it is).
# Needs perf (Debian: linux-perf); software sampling (cpu-clock) works where the CPU's
# counters are not exposed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NAME="${1:?usage: scripts/profile.sh NAME [concord bench args...]}"
shift
SECS="${SECS:-8}"
PERF_SECS="${PERF_SECS:-4}"
FREQ="${FREQ:-499}"
OUT_DIR="${OUT_DIR:-$ROOT/data/profile}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/concord"
PORT=14322

command -v perf >/dev/null || { echo "profile: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source scripts/tools.sh
NATS_SERVER="$(concord_nats_server_path)"
[[ "${NO_BUILD:-0}" == 1 ]] || cargo build --release --quiet
[[ -x "$BIN" ]] || { echo "profile: $BIN not found" >&2; exit 1; }

mkdir -p "$OUT_DIR" "$ROOT/data"
WORK="$(mktemp -d "$ROOT/data/profile.XXXXXX")"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

"$NATS_SERVER" -a 127.0.0.1 -p "$PORT" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
URL="nats://127.0.0.1:$PORT"
for _ in $(seq 50); do
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null && break
    sleep 0.2
done
for i in 1 2 3; do
    mkdir -p "$WORK/n$i"
    env CONCORD_NODE__ID="$i" CONCORD_CLUSTER__INITIAL_MEMBERS=1,2,3 \
        CONCORD_DATA_DIR="$WORK/n$i" CONCORD_NATS__URL="$URL" \
        "$BIN" serve >"$WORK/n$i.log" 2>&1 &
    PIDS+=($!)
done
deadline=$((SECONDS + 60))
until "$BIN" --nats-url "$URL" --timeout-ms 2000 put profile:warmup 1 >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { tail -n 20 "$WORK"/n*.log >&2; echo "profile: no cluster in 60 s" >&2; exit 1; }
    sleep 0.5
done

pids="$(IFS=,; echo "${PIDS[*]}")"
# Bytes each thread has written to disk (write_bytes: what reached the block layer or the page
# cache to be written), by process and thread name; read before and after the run.
io_by_thread() {
    local p t
    for p in "${PIDS[@]}"; do
        for t in /proc/"$p"/task/*; do
            [[ -r "$t/io" ]] || continue
            printf '%s\t%s\t%s\t%s\n' "$p" "${t##*/}" "$(cat "$t/comm" 2>/dev/null)" \
                "$(awk '/^write_bytes/ {print $2}' "$t/io" 2>/dev/null)"
        done
    done
}
io_by_thread >"$WORK/io.before"
"$BIN" --nats-url "$URL" bench --json --duration "${SECS}s" "$@" >"$WORK/bench.json" &
bench_pid=$!
sleep 2
graph=()
[[ "${CALL_GRAPH:-0}" == 1 ]] && graph=(--call-graph dwarf,16384)
perf record -q -F "$FREQ" -e cpu-clock "${graph[@]}" -p "$pids" -o "$WORK/perf.data" -- sleep "$PERF_SECS" 2>/dev/null
wait "$bench_pid"
io_by_thread >"$WORK/io.after"
cp "$WORK/perf.data" "$OUT_DIR/$NAME.perf.data"
python3 - "$WORK/bench.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
l = s["latency_us"]
print(f"bench: {s['ops_per_sec']:,.0f} ops/s, p50 {l['p50'] / 1000:.3f} ms, p99 {l['p99'] / 1000:.3f} ms (the whole run)")
PY

# Who is who: the leader by its status, the others followers, and the nats-server.
leader="$("$BIN" --nats-url "$URL" cluster status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader"))' || echo 0)"
roles="${PIDS[0]}=nats-server"
for i in 1 2 3; do
    if [[ "$i" == "$leader" ]]; then roles+=",${PIDS[$i]}=leader"; else roles+=",${PIDS[$i]}=follower-$i"; fi
done
python3 - "$WORK/bench.json" "$WORK/io.before" "$WORK/io.after" "$roles" "$SECS" <<'PY'
import collections, json, sys
s = json.load(open(sys.argv[1]))
ops = s.get("ops") or s["ops_per_sec"] * float(sys.argv[5])
roles = dict(r.split("=") for r in sys.argv[4].split(","))
def read(path):
    out = {}
    for line in open(path):
        pid, tid, comm, written = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
        out[(pid, tid)] = (comm, int(written or 0))
    return out
before, after = read(sys.argv[2]), read(sys.argv[3])
by = collections.Counter()
for (pid, tid), (comm, written) in after.items():
    # A thread that started during the run wrote all its bytes in it.
    by[(roles.get(pid, pid), comm)] += written - before.get((pid, tid), (comm, 0))[1]
total = sum(by.values())
print(f"disk writes: {total / 1e6:,.1f} MB in the run, {total / max(ops, 1) / 1024:,.1f} KiB per op, by process and thread:")
for (role, comm), n in sorted(by.items(), key=lambda kv: -kv[1]):
    if n > 0:
        print(f"  {role:<12} {comm:<18} {n / 1e6:>9,.1f} MB  {n / max(ops, 1) / 1024:>8,.1f} KiB/op")
PY
# -G: one line per sample, also when call graphs were recorded.
perf script -i "$WORK/perf.data" -G -F comm,pid,tid,ip,sym,dso 2>/dev/null |
    python3 "$ROOT/scripts/fold-stacks.py" --flat "$roles"
if [[ "${CALL_GRAPH:-0}" == 1 ]]; then
    perf script -i "$WORK/perf.data" 2>/dev/null | python3 "$ROOT/scripts/fold-stacks.py" >"$OUT_DIR/$NAME.folded"
    echo
    echo "folded stacks: ${OUT_DIR#"$ROOT"/}/$NAME.folded"
fi
