#!/usr/bin/env bash
# scripts/cluster-up.sh — run a local 3-node Concord cluster for a demo or manual testing.
#
# Starts (in the background, detached from this terminal):
#   nats-server on 127.0.0.1:4222     pid data/nats.pid, log data/nats.log, ping settings from
#                                     compose/nats/liveness.conf
#                                     (not started if something already listens on 4222)
#   concord serve, nodes 1, 2, 3      pid data/n$i.pid, log data/n$i.log, data dir data/n$i,
#                                     metrics on 127.0.0.1:9464, :9465, :9466 (/metrics, /readyz)
# then waits (at most 30 s) until the cluster reports a leader and its log format switch, and then, when `prometheus` is
# on the PATH (Debian: apt-get install prometheus), starts it too:
#   prometheus on 127.0.0.1:9090      pid data/prometheus.pid, log data/prometheus.log,
#                                     config data/prometheus.yml, storage data/prometheus/
# Stop it all with scripts/cluster-down.sh (--wipe to also delete the node data).
#
# Options:
#   --no-build       use the existing target/release/concord instead of running cargo build
#   --no-prometheus  do not start Prometheus even if it is installed
# Environment: RUST_LOG (node log filter) and other CONCORD_* settings pass through to the nodes.
set -euo pipefail

usage() { sed -n '2,19s/^# \{0,1\}//p' "$0"; }

build=1
want_prometheus=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        --no-prometheus) want_prometheus=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "cluster-up: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

orig_pwd="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Only nats-server is needed here; don't make a demo wait for `just`.
# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source scripts/tools.sh

NATS_HOST=127.0.0.1
NATS_PORT=4222
NATS_URL="nats://$NATS_HOST:$NATS_PORT"
NODES=(1 2 3)
DATA="$ROOT/data"
BIN="$ROOT/target/release/concord"
WAIT_SECS=30
# Node i serves /metrics, /healthz and /readyz on 127.0.0.1:$((METRICS_BASE_PORT + i)); the
# same host ports as compose/docker-compose.yml publishes.
METRICS_HOST=127.0.0.1
METRICS_BASE_PORT=9463
PROM_HOST=127.0.0.1
PROM_PORT=9090

# The CLI calls below (cluster status) must reach the same NATS as the nodes.
export CONCORD_NATS__URL="$NATS_URL"

# How to show paths in the hints: relative when the user is in the repo root, else absolute.
if [[ "$orig_pwd" == "$ROOT" ]]; then show=""; else show="$ROOT/"; fi

# --- helpers ------------------------------------------------------------------------------

# Does something accept TCP connections on host:port? bash's /dev/tcp, so no nc/ss needed.
# The subshell closes the socket again; timeout guards against a filtered port hanging connect().
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Print the pid from a pid file if it names a live, non-zombie process and, when $2 is given,
# one whose command name is $2: a stale pid file's number may since have gone to another
# program. (Right after start_bg the name is briefly that of setsid/env, so checks made while
# starting pass no name.)
live_pid() {
    local file="$1" name="${2:-}" pid state
    [[ -f "$file" ]] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    [[ "$state" != Z ]] || return 1
    if [[ -n "$name" ]]; then
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == "$name" ]] || return 1
    fi
    printf '%s\n' "$pid"
}

# Start a command detached (own session: Ctrl-C or closing this terminal won't kill it),
# stdin from /dev/null, stdout+stderr appended to $2, pid into $1.
start_bg() {
    local pidfile="$1" log="$2"
    shift 2
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" </dev/null >>"$log" 2>&1 &
    else
        nohup "$@" </dev/null >>"$log" 2>&1 &
    fi
    echo $! >"$pidfile"
}

show_logs() {
    local f i files=()
    for i in "${NODES[@]}"; do files+=("$DATA/n$i.log"); done
    files+=("$DATA/nats.log")
    for f in "${files[@]}"; do
        [[ -f "$f" ]] || continue
        echo "----- tail ${f#"$ROOT"/} -----" >&2
        tail -n 25 "$f" >&2
    done
}

# --- build ----------------------------------------------------------------------------------

if [[ "$build" == 1 ]]; then
    # Release build: three nodes plus the CLI start fast and the demo feels like production.
    echo "==> cargo build --release --bin concord"
    cargo build --release --bin concord
fi
[[ -x "$BIN" ]] || { echo "cluster-up: $BIN not found (build it, or drop --no-build)" >&2; exit 1; }

mkdir -p "$DATA"

# Refuse before starting anything, so we never end up with half a cluster of mixed binaries.
for i in "${NODES[@]}"; do
    if pid="$(live_pid "$DATA/n$i.pid" concord)"; then
        echo "cluster-up: node $i is already running (pid $pid, data/n$i.pid)." >&2
        echo "            Stop the cluster first: scripts/cluster-down.sh" >&2
        exit 1
    fi
    rm -f "$DATA/n$i.pid" # stale
    # A node whose metrics port is taken exits at start; say which port instead.
    if port_open "$METRICS_HOST" "$((METRICS_BASE_PORT + i))"; then
        echo "cluster-up: $METRICS_HOST:$((METRICS_BASE_PORT + i)), node $i's metrics port, is in use" >&2
        exit 1
    fi
done

# --- NATS -----------------------------------------------------------------------------------

if port_open "$NATS_HOST" "$NATS_PORT"; then
    if pid="$(live_pid "$DATA/nats.pid" nats-server)"; then
        echo "==> nats-server already running (pid $pid)"
    else
        # Someone else's server (or another process); use it rather than fail. We didn't start
        # it, so cluster-down must not stop it: no pid file.
        rm -f "$DATA/nats.pid"
        echo "==> something already listens on $NATS_HOST:$NATS_PORT; using it as the NATS server"
    fi
else
    if pid="$(live_pid "$DATA/nats.pid" nats-server)"; then
        echo "cluster-up: our nats-server (pid $pid) runs but does not listen on $NATS_HOST:$NATS_PORT;" >&2
        echo "            see data/nats.log, or stop everything with scripts/cluster-down.sh" >&2
        exit 1
    fi
    rm -f "$DATA/nats.pid"
    echo "==> starting nats-server on $NATS_HOST:$NATS_PORT (log: data/nats.log)"
    echo "===== cluster-up $(date -u +%FT%TZ) =====" >>"$DATA/nats.log"
    # The real binary, not a pyenv shim, so that the pid file names nats-server itself.
    # liveness.conf: the shipped ping settings, so that a paused or hung node's connection
    # (and its queue subscriptions) goes within seconds, as in compose/.
    start_bg "$DATA/nats.pid" "$DATA/nats.log" "$(concord_nats_server_path)" \
        -c "$ROOT/compose/nats/liveness.conf" -a "$NATS_HOST" -p "$NATS_PORT"
    for _ in $(seq 50); do
        port_open "$NATS_HOST" "$NATS_PORT" && break
        live_pid "$DATA/nats.pid" >/dev/null || break
        sleep 0.1
    done
    if ! port_open "$NATS_HOST" "$NATS_PORT"; then
        echo "cluster-up: nats-server did not come up on $NATS_HOST:$NATS_PORT" >&2
        tail -n 25 "$DATA/nats.log" >&2 || true
        exit 1
    fi
fi

# --- nodes ----------------------------------------------------------------------------------

members="$(IFS=,; echo "${NODES[*]}")"
for i in "${NODES[@]}"; do
    echo "==> starting node $i (data: data/n$i, log: data/n$i.log)"
    # Logs are appended across runs; mark where this run starts.
    echo "===== cluster-up $(date -u +%FT%TZ) =====" >>"$DATA/n$i.log"
    start_bg "$DATA/n$i.pid" "$DATA/n$i.log" \
        env CONCORD_NODE__ID="$i" \
        CONCORD_CLUSTER__INITIAL_MEMBERS="$members" \
        CONCORD_DATA_DIR="$DATA/n$i" \
        CONCORD_NATS__URL="$NATS_URL" \
        CONCORD_METRICS__LISTEN="$METRICS_HOST:$((METRICS_BASE_PORT + i))" \
        "$BIN" serve
done

# --- wait for a leader ----------------------------------------------------------------------

has_leader() {
    python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
# A leader, and the cluster on log format 2: before the format switch (a second or so
# after a new cluster elects its first leader) writes ignore their request ids.
ok = isinstance(d, dict) and d.get("leader") is not None
fmt = d.get("log_format") if isinstance(d, dict) else None
sys.exit(0 if ok and isinstance(fmt, dict) and fmt.get("cluster", 0) >= 2 else 1)'
}

printf '==> waiting for a leader (up to %ss) ' "$WAIT_SECS"
deadline=$((SECONDS + WAIT_SECS))
ready=0
while ((SECONDS < deadline)); do
    # A node that died will not come back: say so now instead of waiting out the timeout.
    for i in "${NODES[@]}"; do
        if ! live_pid "$DATA/n$i.pid" >/dev/null; then
            echo
            echo "cluster-up: node $i exited; see data/n$i.log" >&2
            show_logs
            exit 1
        fi
    done
    if timeout 5 "$BIN" cluster status --json 2>/dev/null | has_leader; then
        ready=1
        break
    fi
    printf '.'
    sleep 0.5
done
echo

if [[ "$ready" != 1 ]]; then
    echo "cluster-up: no leader after ${WAIT_SECS}s. The processes are left running for inspection;" >&2
    echo "            stop them with scripts/cluster-down.sh" >&2
    show_logs
    exit 1
fi

# --- Prometheus (optional) ---------------------------------------------------------------

# Writes data/prometheus.yml and starts prometheus unless it is missing, unwanted or already
# running. Never fails the cluster start: the cluster is up by now.
prom_status="not started"
start_prometheus() {
    local bin pid targets=() i
    if [[ "$want_prometheus" != 1 ]]; then
        prom_status="not started (--no-prometheus)"
        return 0
    fi
    if pid="$(live_pid "$DATA/prometheus.pid" prometheus)"; then
        echo "==> prometheus already running (pid $pid)"
        prom_status="http://$PROM_HOST:$PROM_PORT"
        return 0
    fi
    rm -f "$DATA/prometheus.pid"
    if ! bin="$(command -v prometheus)"; then
        prom_status="not started: no \`prometheus\` on PATH (Debian: apt-get install --no-install-recommends prometheus)"
        return 0
    fi
    if port_open "$PROM_HOST" "$PROM_PORT"; then
        prom_status="not started: something else listens on $PROM_HOST:$PROM_PORT"
        return 0
    fi
    for i in "${NODES[@]}"; do targets+=("\"$METRICS_HOST:$((METRICS_BASE_PORT + i))\""); done
    cat >"$DATA/prometheus.yml" <<PROM
# Written by scripts/cluster-up.sh: scrape the local cluster's nodes (job "concord", as in
# compose/prometheus/prometheus.yml, which the Grafana dashboard expects).
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: concord
    static_configs:
      - targets: [$(IFS=,; echo "${targets[*]}")]
PROM
    mkdir -p "$DATA/prometheus"
    echo "==> starting prometheus on $PROM_HOST:$PROM_PORT (config: data/prometheus.yml, log: data/prometheus.log)"
    echo "===== cluster-up $(date -u +%FT%TZ) =====" >>"$DATA/prometheus.log"
    start_bg "$DATA/prometheus.pid" "$DATA/prometheus.log" "$bin" \
        --config.file="$DATA/prometheus.yml" \
        --storage.tsdb.path="$DATA/prometheus" \
        --storage.tsdb.retention.time=2d \
        --web.listen-address="$PROM_HOST:$PROM_PORT"
    for _ in $(seq 100); do
        port_open "$PROM_HOST" "$PROM_PORT" && break
        live_pid "$DATA/prometheus.pid" >/dev/null || break
        sleep 0.1
    done
    if port_open "$PROM_HOST" "$PROM_PORT"; then
        prom_status="http://$PROM_HOST:$PROM_PORT"
    else
        prom_status="failed to start; see data/prometheus.log"
        echo "cluster-up: prometheus did not come up on $PROM_HOST:$PROM_PORT (the cluster is up)" >&2
        tail -n 15 "$DATA/prometheus.log" >&2 || true
    fi
}
start_prometheus

echo
"$BIN" cluster status || echo "(concord cluster status failed, though --json reported a leader)" >&2
echo
metrics_urls=""
for i in "${NODES[@]}"; do metrics_urls+=" http://$METRICS_HOST:$((METRICS_BASE_PORT + i))/metrics"; done
cat <<EOF
Cluster is up. Try:

  ${show}target/release/concord put user:1 '{"name":"Alice"}'
  ${show}target/release/concord get user:1

or straight over NATS (needs the optional \`nats\` CLI, natscli; any NATS client works):

  nats req concord.kv.get '{"key":"user:1"}'

Status:     ${show}target/release/concord cluster status
Events:     ${show}target/release/concord watch-telemetry
Metrics:   ${metrics_urls}
            (also /healthz and /readyz on each)
Prometheus: ${prom_status}
Grafana:    not run here; the dashboard is grafana/dashboards/concord.json (compose/ runs it)
Logs:       ${show}data/n{1,2,3}.log ${show}data/nats.log
Stop:       ${show}scripts/cluster-down.sh   (add --wipe to delete the node data too)
EOF
