# scripts/bench-lib.sh — sourced by the bench-*.sh scripts: a private nats-server and fresh
# 3-node release clusters on loopback, stopped by recorded PID only.
#
#   bench_start_nats OUT PORT        start nats-server, wait until it listens
#   bench_start_cluster OUT ENV...   3 nodes with ENV (VAR=value words) and, per node, the
#                                    words in BENCH_NODE_ENV_<i> if set; waits for a leader
#                                    (status asked with BENCH_STATUS_TOKEN when set) and for
#                                    the switch to log format 2 (a new cluster writes format 1
#                                    for its first moments, without the change log; a build
#                                    whose status has no log_format passes at once)
#   bench_stop_cluster               SIGTERM the nodes and wait for them
# BIN, the node PIDs (bench_pids) and bench_cpids (comma-separated) are set for the caller.

bench_pids=()
bench_cpids=""
bench_nats_pid=""

# Ready: a leader, and the cluster writes log format 2 (or the build predates formats).
read -r -d '' BENCH_READY_PY <<'PY' || true
import json, sys
d = json.load(sys.stdin)
f = d.get("log_format")
sys.exit(0 if d.get("leader") and (f is None or f.get("cluster", 0) >= 2) else 1)
PY

bench_cleanup() {
    for p in "${bench_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [[ -n "$bench_nats_pid" ]] && kill "$bench_nats_pid" 2>/dev/null || true
}

bench_start_nats() {
    local out=$1 port=$2
    nats-server -a 127.0.0.1 -p "$port" -l "$out/nats.log" &
    bench_nats_pid=$!
    trap bench_cleanup EXIT
    # Nodes refuse to start without NATS: wait until it listens.
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: nats-server did not listen on $port" >&2
    return 1
}

bench_start_cluster() {
    local out=$1
    shift
    rm -rf "$out/data"
    mkdir -p "$out/data"
    bench_pids=()
    for i in 1 2 3; do
        local per_node="BENCH_NODE_ENV_$i" node_env=()
        read -r -a node_env <<<"${!per_node:-}"
        env "$@" "${node_env[@]}" CONCORD_NODE__ID=$i CONCORD_CLUSTER__INITIAL_MEMBERS=1,2,3 \
            CONCORD_CLUSTER__NAME=bench CONCORD_DATA_DIR="$out/data/n$i" RUST_LOG=warn \
            "$BIN" serve >>"$out/data/n$i.log" 2>&1 &
        bench_pids+=($!)
    done
    local token=()
    [[ -n "${BENCH_STATUS_TOKEN:-}" ]] && token=(--token "$BENCH_STATUS_TOKEN")
    for _ in $(seq 100); do
        for p in "${bench_pids[@]}"; do
            kill -0 "$p" 2>/dev/null || { echo "bench: a node exited; see $out/data" >&2; return 1; }
        done
        if "$BIN" "${token[@]}" --timeout-ms 1000 cluster status --json 2>/dev/null \
            | python3 -c "$BENCH_READY_PY" 2>/dev/null; then
            bench_cpids=$(IFS=,; echo "${bench_pids[*]}")
            return 0
        fi
        sleep 0.3
    done
    echo "bench: no leader; see $out/data" >&2
    return 1
}

bench_stop_cluster() {
    for p in "${bench_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${bench_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    bench_pids=()
}
