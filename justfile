# Concord task runner. `just` lists the recipes; tools come from scripts/tools.sh
# (`scripts/tools.sh` installs nats-server and just into ./.tools without root).

set shell := ["bash", "-euo", "pipefail", "-c"]
# Recipe arguments reach the commands as "$@", so they are quoted safely.
set positional-arguments

concord := "target/release/concord"

# List the recipes
default:
    @{{ just_executable() }} --list --unsorted

# Release build of the concord binary
build:
    cargo build --release --bin concord

# Start nats-server, 3 nodes (metrics on :9464-9466) and, if installed, Prometheus (:9090) in the background (data/)
cluster-up *args:
    scripts/cluster-up.sh "$@"

# Stop the local cluster and its Prometheus (--wipe also deletes data/n1..n3 and data/prometheus)
cluster-down *args:
    scripts/cluster-down.sh "$@"

# Start one more local node (cluster.join = true) for `concord cluster add ID`
node-join id:
    scripts/node-join.sh "$1"

# Show the local cluster's status (builds concord if needed)
cluster-status *args:
    cargo build --release --bin concord --quiet
    {{ concord }} cluster status "$@"

# All tests (unit + integration), with nats-server installed/found; args go to cargo test
test *args:
    scripts/test.sh "$@"

# Integration tests only (tests/*.rs)
it *args:
    scripts/test.sh --test '*' "$@"

# Formatting check, clippy with warnings as errors (the node and every crate under crates/), and the layout check (scripts/layout-check.py)
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    python3 scripts/layout-check.py

# Format the code
fmt:
    cargo fmt --all

# Install the dev tools (nats-server, just) into ./.tools if missing
tools:
    scripts/tools.sh

# Env: SECS=5 REPS=3 per workload, QUICK=1 (smoke run), SYSTEMS="concord etcd ...", KEEP=1.
# Concord vs etcd 3.4 vs NATS JetStream KV, all clusters up, each row back to back -> data/bench-compare-*.md
bench-compare:
    scripts/bench-compare.sh

# Fault suite: every nemesis (kill, pause, partition, restart) 30 s each, then the verdict
jepsen *args:
    scripts/check.sh "$@"

# Longer fault run (not in CI): 5 minutes per nemesis, 10 clients
soak *args:
    scripts/check.sh --duration 300s --clients 10 --out data/soak "$@"
