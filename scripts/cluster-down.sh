#!/usr/bin/env bash
# scripts/cluster-down.sh — stop the local cluster that scripts/cluster-up.sh started.
#
# Stops the processes named by data/n1.pid .. data/n3.pid first, then data/prometheus.pid,
# then data/nats.pid (nodes first, so they don't spend their shutdown reconnecting to a NATS
# that is gone): SIGTERM, up to 10 s for a clean exit, then SIGKILL. Removes the pid files. A
# NATS server that cluster-up found already running (no pid file) is left alone.
#
# Options:
#   --wipe    also delete the node data directories data/n1 .. data/n3 and Prometheus'
#             data/prometheus (logs are kept)
set -euo pipefail

usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; }

wipe=0
for arg in "$@"; do
    case "$arg" in
        --wipe) wipe=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "cluster-down: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/data"
# The three of cluster-up, and any node started by scripts/node-join.sh.
NODES=(1 2 3)
for f in "$DATA"/n*.pid; do
    [[ -f "$f" ]] || continue
    i="${f##*/n}"; i="${i%.pid}"
    [[ "$i" =~ ^[0-9]+$ && "$i" -gt 3 ]] && NODES+=("$i")
done
GRACE_SECS=10

# Is pid alive? kill -0 alone would also count a zombie (dead, not yet reaped) as alive.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)" != Z ]]
}

# Stop one group of processes. Arguments: expected command name, then label=pidfile pairs.
# Sends SIGTERM to all of the group at once, so the grace period is shared, not per process.
stop_group() {
    local name="$1" entry label file pid comm
    shift
    local -a labels=() pids=() files=()
    for entry in "$@"; do
        label="${entry%%=*}"
        file="${entry#*=}"
        [[ -f "$file" ]] || continue
        pid="$(tr -dc '0-9' <"$file")"
        if [[ -z "$pid" ]] || ! alive "$pid"; then
            echo "$label: not running (removing stale ${file#"$ROOT"/})"
            rm -f "$file"
            continue
        fi
        # A pid file can outlive its process and the kernel reuses numbers: never signal a
        # process that is not the program we started.
        comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
        if [[ "$comm" != "$name" ]]; then
            echo "$label: pid $pid is now '$comm', not $name; leaving it alone (removing stale ${file#"$ROOT"/})"
            rm -f "$file"
            continue
        fi
        kill -TERM "$pid" 2>/dev/null || true
        labels+=("$label")
        pids+=("$pid")
        files+=("$file")
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0

    local deadline=$((SECONDS + GRACE_SECS)) any i
    while ((SECONDS < deadline)); do
        any=0
        for pid in "${pids[@]}"; do alive "$pid" && any=1; done
        [[ "$any" == 1 ]] || break
        sleep 0.1
    done

    for i in "${!pids[@]}"; do
        pid="${pids[$i]}"
        if alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            # SIGKILL is not instant for a process stuck in the kernel; give it a moment.
            for _ in $(seq 20); do alive "$pid" || break; sleep 0.1; done
            if alive "$pid"; then
                echo "${labels[$i]}: pid $pid survived SIGKILL; keeping ${files[$i]#"$ROOT"/}" >&2
                continue
            fi
            echo "${labels[$i]}: killed (pid $pid did not exit within ${GRACE_SECS}s of SIGTERM)"
        else
            echo "${labels[$i]}: stopped (pid $pid)"
        fi
        rm -f "${files[$i]}"
    done
}

node_entries=()
for i in "${NODES[@]}"; do node_entries+=("node $i=$DATA/n$i.pid"); done

found=0
for f in "${node_entries[@]#*=}" "$DATA/prometheus.pid" "$DATA/nats.pid"; do [[ -f "$f" ]] && found=1; done
if [[ "$found" == 0 ]]; then
    echo "no pid files in ${DATA#"$ROOT"/}/: nothing to stop"
fi

stop_group concord "${node_entries[@]}"
stop_group prometheus "prometheus=$DATA/prometheus.pid"
stop_group nats-server "nats-server=$DATA/nats.pid"

if [[ "$wipe" == 1 ]]; then
    for i in "${NODES[@]}"; do
        if [[ -f "$DATA/n$i.pid" ]]; then
            echo "cluster-down: node $i may still be running; not wiping data/n$i" >&2
            exit 1
        fi
    done
    for i in "${NODES[@]}"; do
        if [[ -e "$DATA/n$i" ]]; then
            rm -rf "${DATA:?}/n$i"
            echo "wiped ${DATA#"$ROOT"/}/n$i"
        fi
    done
    if [[ -f "$DATA/prometheus.pid" ]]; then
        echo "cluster-down: prometheus may still be running; not wiping data/prometheus" >&2
        exit 1
    fi
    if [[ -e "$DATA/prometheus" ]]; then
        rm -rf "${DATA:?}/prometheus"
        echo "wiped ${DATA#"$ROOT"/}/prometheus"
    fi
fi
