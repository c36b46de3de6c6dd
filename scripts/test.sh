#!/usr/bin/env bash
# scripts/test.sh — run the Rust test suite with a nats-server available.
#
# The integration tests start their own nats-server (on their own ports); they find it through
# CONCORD_TEST_NATS_SERVER, which this script sets (from PATH, after scripts/tools.sh has put
# .tools/bin there and installed nats-server if it was missing).
#
# Use:  scripts/test.sh [cargo test args...]
#   Always --workspace (the node and the crates under crates/: wire, harness, check, bench) and
#   --features concord/failpoints. With no target selection (--lib, --test NAME, --doc, ...)
#   among the args, --lib --bins --tests is added (and Prometheus, which
#   tests/dashboard.rs needs, is installed when possible). Everything is passed on to `cargo test`, e.g.
#   scripts/test.sh -- --nocapture, or scripts/test.sh --test lifecycle (tests/lifecycle.rs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# shellcheck source=scripts/tools.sh
CONCORD_TOOLS="nats-server" source scripts/tools.sh
export PATH CONCORD_TEST_NATS_SERVER
echo "test.sh: nats-server $("$CONCORD_TEST_NATS_SERVER" --version 2>&1 | head -n 1 | sed 's/^nats-server: //') at $CONCORD_TEST_NATS_SERVER"

# Did the caller pick targets? Only look before `--` (after it come the test binary's args).
selected=0
for arg in "$@"; do
    case "$arg" in
        --) break ;;
        --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --benches | --bench | --bench=* | \
            --examples | --example | --example=* | --doc | --all-targets) selected=1 ;;
    esac
done
# Not --all-targets: that builds the examples a second time, as test harnesses with no tests
# in them; they are built once below, as the programs tests/recipes.rs runs (and
# `just lint` lints every target). There are no benches.
[[ "$selected" == 1 ]] || set -- --lib --bins --tests "$@"
# The whole suite includes tests/dashboard.rs, which runs a real Prometheus: try to install
# Debian's package (needs root or sudo, as in .ci/run), but only warn when that fails, so a
# fresh machine without root still runs every other test.
if [[ "$selected" == 0 && -z "${CONCORD_TEST_PROMETHEUS:-}" ]] && ! command -v prometheus >/dev/null 2>&1; then
    scripts/tools.sh prometheus >/dev/null ||
        echo "test.sh: could not install prometheus; tests/dashboard.rs will fail (see its message)" >&2
fi
# tests/upgrade.rs upgrades a cluster of the previous build (the commit before log format 2)
# to this one: build it from the clone's own history, unless it is named already. A clone
# without that history (shallow) runs the suite without it, saying so loudly; any other
# failure to build it fails the run.
wants_upgrade=0
[[ "$selected" == 0 ]] && wants_upgrade=1
for arg in "$@"; do
    case "$arg" in
        --) break ;;
        upgrade | --test=upgrade) wants_upgrade=1 ;;
    esac
done
if [[ "$wants_upgrade" == 1 && -z "${CONCORD_TEST_PREVIOUS_BIN:-}" ]]; then
    rc=0
    previous="$(scripts/build-previous.sh)" || rc=$?
    if [[ "$rc" == 0 ]]; then
        export CONCORD_TEST_PREVIOUS_BIN="$previous" CONCORD_TEST_REQUIRE_PREVIOUS=1
        echo "test.sh: previous build for tests/upgrade.rs at $previous"
    elif [[ "$rc" == 3 ]]; then
        echo "test.sh: WARNING: no previous build (its commit is not in this clone); tests/upgrade.rs will skip" >&2
    else
        echo "test.sh: building the previous build failed" >&2
        exit "$rc"
    fi
fi
# The fault suite's own tests switch deliberate bugs on in the nodes (CONCORD_FAILPOINTS);
# the code exists only in builds with this feature, never in `cargo build --release`. The
# feature is the root package's: the integration tests run the `concord` binary it builds.
set -- --workspace --features concord/failpoints "$@"

# tests/recipes.rs runs the examples/ binaries against a real cluster; `cargo test` with a
# target selection (and --all-targets) builds examples only in test mode, so build them as
# programs first, with the same features (the library build is shared).
wants_recipes=0
[[ "$selected" == 0 ]] && wants_recipes=1
for arg in "$@"; do
    case "$arg" in
        --) break ;;
        recipes | --test=recipes | --all-targets | --tests) wants_recipes=1 ;;
    esac
done
if [[ "$wants_recipes" == 1 ]]; then
    echo "test.sh: cargo build --features concord/failpoints --examples (for tests/recipes.rs)"
    cargo build --features concord/failpoints --examples
fi

echo "test.sh: cargo test $*"
exec cargo test "$@"
