#!/usr/bin/env bash
# scripts/check.sh — the fault suite against a cluster it starts itself: `concord check`
# (workload + nemesis + linearizability checker). Partitions need root (network namespaces);
# without root the run uses loopback and skips the partition nemesis.
# Use: scripts/check.sh [concord check args...]   e.g. --nemesis kill,pause --duration 60s
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source scripts/tools.sh
export PATH CONCORD_TEST_NATS_SERVER
cargo build --release --bin concord --quiet
exec "${CARGO_TARGET_DIR:-target}/release/concord" check "$@"
