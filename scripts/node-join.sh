#!/usr/bin/env bash
# scripts/node-join.sh ID — start one more node for the local cluster of scripts/cluster-up.sh,
# ready to be added with `concord cluster add ID`.
#
# Starts, in the background: concord serve with node id ID, cluster.join = true, data dir
# data/nID, log data/nID.log, pid data/nID.pid, metrics on 127.0.0.1:(9463 + ID), on the
# cluster's NATS (127.0.0.1:4222). It waits until the node answers, then prints the next step.
# scripts/cluster-down.sh stops it with the others.
set -euo pipefail

usage() { sed -n '2,8s/^# \{0,1\}//p' "$0"; }
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    '' | *[!0-9]*) echo "node-join: give the new node's numeric id (e.g. 4)" >&2; usage >&2; exit 2 ;;
esac
id="$1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="$ROOT/data"
BIN="$ROOT/target/release/concord"
export CONCORD_NATS__URL="nats://127.0.0.1:4222"

[[ -x "$BIN" ]] || { echo "node-join: $BIN is missing; run scripts/cluster-up.sh first" >&2; exit 1; }
if [[ -f "$DATA/n$id.pid" ]] && kill -0 "$(tr -dc '0-9' <"$DATA/n$id.pid")" 2>/dev/null; then
    echo "node-join: node $id is already running (data/n$id.pid)" >&2
    exit 1
fi
mkdir -p "$DATA"
echo "===== node-join $(date -u +%FT%TZ) =====" >>"$DATA/n$id.log"
setsid env CONCORD_NODE__ID="$id" \
    CONCORD_CLUSTER__JOIN=true \
    CONCORD_CLUSTER__INITIAL_MEMBERS=1,2,3 \
    CONCORD_DATA_DIR="$DATA/n$id" \
    CONCORD_METRICS__LISTEN="127.0.0.1:$((9463 + id))" \
    "$BIN" serve </dev/null >>"$DATA/n$id.log" 2>&1 &
echo $! >"$DATA/n$id.pid"

for _ in $(seq 1 100); do
    # The node logs this once it serves its own subjects and waits to be added.
    if tail -n 50 "$DATA/n$id.log" | grep -q "waiting to be added"; then
        break
    fi
    kill -0 "$(cat "$DATA/n$id.pid")" 2>/dev/null || {
        echo "node-join: node $id exited; see data/n$id.log:" >&2
        tail -n 20 "$DATA/n$id.log" >&2
        exit 1
    }
    sleep 0.2
done
echo "node $id is up (log: data/n$id.log). Add it with:"
echo "  target/release/concord cluster add $id"
