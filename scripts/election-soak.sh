#!/usr/bin/env bash
# scripts/election-soak.sh — spurious elections under load. Starts a fresh three-node cluster
# of one binary (its own nats-server on a free loopback port, data in a new temp dir, nothing
# shared with `just cluster-up`), runs `concord bench` against it, and compares every node's
# Raft term and leader before and after: with no fault injected, any term change is a
# spurious election. Prints one JSON line (`terms_before`, `terms_after`, `elections`,
# `leaders_before`, `leaders_after`, connections nats-server closed as stale under the shipped
# ping settings, and the bench's own JSON verdict); exit status 1 when a term changed or a
# connection was closed.
# Use: scripts/election-soak.sh [--bin PATH] [--clients N] [--duration 600s] [--mix put=100]
# Environment: CONCORD_RAFT__* and other CONCORD_* settings pass through to the nodes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/concord"
CLIENTS=64
DURATION=600s
MIX=put=100
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) BIN="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --mix) MIX="$2"; shift 2 ;;
        -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "election-soak: unknown argument: $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source "$ROOT/scripts/tools.sh"
[[ -x "$BIN" ]] || { echo "election-soak: $BIN not found (cargo build --release)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/concord-soak-XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
URL="nats://127.0.0.1:$PORT"
# The shipped ping settings: a node silent past them would be dropped, which the soak must see.
"$(concord_nats_server_path)" -c "$ROOT/compose/nats/liveness.conf" -a 127.0.0.1 -p "$PORT" \
    >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null && break
    sleep 0.2
done
for i in 1 2 3; do
    env CONCORD_NODE__ID="$i" CONCORD_CLUSTER__INITIAL_MEMBERS="1,2,3" \
        CONCORD_DATA_DIR="$WORK/n$i" CONCORD_NATS__URL="$URL" \
        "$BIN" serve >"$WORK/n$i.log" 2>&1 &
    PIDS+=($!)
done

# Every node's term and leader, as one JSON object per node.
terms() {
    CONCORD_NATS__URL="$URL" "$BIN" cluster status --json 2>/dev/null |
        python3 -c 'import json,sys; v=json.load(sys.stdin); print(json.dumps({str(n["node"]): [n.get("term"), n.get("leader")] for n in v.get("nodes", [])}))'
}
# Wait (bounded) until all three nodes answer and agree on a leader.
before=""
for _ in $(seq 60); do
    if s="$(terms)" && python3 -c 'import json,sys; v=json.loads(sys.argv[1]); l={x[1] for x in v.values()}; sys.exit(0 if len(v)==3 and len(l)==1 and None not in l else 1)' "$s"; then
        before="$s"; break
    fi
    sleep 1
done
[[ -n "$before" ]] || { echo "election-soak: no agreed leader within 60 s; logs in $WORK" >&2; exit 1; }

bench="$(CONCORD_NATS__URL="$URL" "$BIN" bench --json --clients "$CLIENTS" --duration "$DURATION" --mix "$MIX")"
after="$(terms)"
# Connections nats-server dropped as silent (the ping settings) and reconnects the nodes logged.
stale="$(grep -c "Stale Client Connection\|Stale Connection" "$WORK/nats.log" || true)"
lost="$(cat "$WORK"/n?.log | grep -c "NATS connection lost\|disconnected" || true)"
python3 - "$before" "$after" "$bench" "$WORK" "$stale" "$lost" <<'PY'
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
bench = json.loads(sys.argv[3])
tb = max(t for t, _ in before.values())
ta = max(t for t, _ in after.values())
print(json.dumps({
    "terms_before": {k: v[0] for k, v in before.items()},
    "terms_after": {k: v[0] for k, v in after.items()},
    "leaders_before": sorted({v[1] for v in before.values()}),
    "leaders_after": sorted({v[1] for v in after.values()}),
    "elections": ta - tb,
    "stale_connections_closed": int(sys.argv[5] or 0),
    "node_disconnects": int(sys.argv[6] or 0),
    "work_dir": sys.argv[4],
    "bench": bench,
}))
sys.exit(0 if ta == tb and int(sys.argv[5] or 0) == 0 else 1)
PY
