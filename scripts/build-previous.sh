#!/usr/bin/env bash
# scripts/build-previous.sh — build the release before log format 2 (the "previous build"),
# for tests/upgrade.rs: a cluster of it is upgraded one node at a time to this tree's build.
#
# Builds the pinned commit from this repository's own history (no network) in a temporary
# git worktree, with this tree's target dir so that dependencies are shared, and copies the
# binary to target/previous/concord. Prints the binary's path. Exits non-zero, saying why,
# when the commit is not in the clone's history (a shallow clone).
#
# Use: scripts/build-previous.sh            (reuses target/previous/concord when present)
#      PREVIOUS_REV=<commit> scripts/build-previous.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The last commit before cluster time and log format 2: what a running cluster upgrades from.
PREVIOUS_REV="${PREVIOUS_REV:-6d3bc52a713b35f190cc0184b1268e5dc6a53d81}"
target="${CARGO_TARGET_DIR:-$ROOT/target}"
out="$target/previous/concord"
stamp="$target/previous/rev"

if [[ -x "$out" && "$(cat "$stamp" 2>/dev/null)" == "$PREVIOUS_REV" ]]; then
    echo "$out"
    exit 0
fi
if ! git -C "$ROOT" cat-file -e "$PREVIOUS_REV^{commit}" 2>/dev/null; then
    echo "build-previous: commit $PREVIOUS_REV is not in this clone's history (shallow clone?); fetch it or set PREVIOUS_REV" >&2
    exit 3
fi
tree="$(mktemp -d)"
cleanup() { git -C "$ROOT" worktree remove --force "$tree/src" >/dev/null 2>&1 || true; rm -rf "$tree"; }
trap cleanup EXIT
git -C "$ROOT" worktree add --detach "$tree/src" "$PREVIOUS_REV" >/dev/null 2>&1
echo "build-previous: building $PREVIOUS_REV (debug) in $tree/src" >&2
# The same target dir: dependencies are shared (a few minutes instead of a full build). The
# previous tree's own crates get their own artifacts (cargo hashes their source paths), and
# only the binary uplifted to target/debug/concord is replaced: it is copied away at once,
# and the next cargo build or test of this tree links its own there again.
# The same packages, features and (through --examples) dev-dependencies as scripts/test.sh
# builds, so that the two builds resolve dependency features alike and share their compiled
# dependencies in one target dir: `--bin concord` alone rebuilt about 40 of them (openraft,
# fjall, async-nats, regex among them) with other features, minutes of a fresh CI run.
CARGO_TARGET_DIR="$target" cargo build --quiet --workspace --features concord/failpoints \
    --bin concord --examples --manifest-path "$tree/src/Cargo.toml" >&2
mkdir -p "$(dirname "$out")"
cp "$target/debug/concord" "$out"
rm -f "$target/debug/concord"
# The workspace's own crates of both trees share names, versions and (cargo leaves a path
# crate's location out of its hash) artifact names: drop the previous tree's, or the next
# build of this tree may link them (a stale concord-wire once did).
CARGO_TARGET_DIR="$target" cargo clean --quiet --manifest-path "$tree/src/Cargo.toml" \
    -p concord -p concord-wire -p concord-harness -p concord-check -p concord-bench >&2
echo "$PREVIOUS_REV" >"$stamp"
echo "$out"
