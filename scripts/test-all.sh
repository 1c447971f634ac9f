#!/usr/bin/env bash
# The one command that checks everything: installs what the tests need (idempotently, fast when
# it is all there) and runs the Rust checks and tests and the Python and TypeScript interop
# suites against the real Viam SDKs.
#
#   scripts/test-all.sh            # from anywhere; works on a fresh Debian machine (as root or with sudo)
#
# Environment: TETHER_BIN (default: $CARGO_TARGET_DIR or target, /debug/tether), PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
PY_REQ="$ROOT/interop/python/requirements.txt"
TS_DIR="$ROOT/interop/ts"
PYTHON="${PYTHON:-python3}"
MIN_NODE_MAJOR=20
export TETHER_BIN="${TETHER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/tether}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. System packages (Debian), only those that are missing.
# ---------------------------------------------------------------------------------------------
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || die "not root and no sudo: cannot install system packages"
  SUDO=(sudo)
fi

APT_UPDATED=0
apt_install() {
  [[ $# -gt 0 ]] || return 0
  command -v apt-get >/dev/null || die "need to install $* but apt-get is not available"
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

need=()
command -v cc >/dev/null || need+=(build-essential)          # C compiler for ring & co.
command -v "$PYTHON" >/dev/null || need+=(python3)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# NAT traversal and fault-injection tests (crates/tether/tests/nat.rs, faults.rs): network
# namespaces, nftables, coturn (NAT, and the TURN-over-TCP tests of both WebRTC interop suites).
# Each test starts its own turnserver inside a namespace; a system coturn service, if apt starts
# one, is unused.
have_sbin() { command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }
have_sbin ip || need+=(iproute2)
have_sbin nft || need+=(nftables)
command -v turnserver >/dev/null || need+=(coturn)
command -v redis-server >/dev/null || need+=(redis-server)     # crates/signaling/tests/redis.rs starts its own
# Camera video (crates/media): VP8 through Debian's libvpx, found with pkg-config.
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists vpx 2>/dev/null || need+=(libvpx-dev)
# WebRTC interop: a real browser for the TypeScript SDK (driven by playwright-core, never a
# downloaded browser) and `ip netns` for the private namespaces both WebRTC suites run in.
CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
[[ -x "$CHROMIUM_BIN" ]] || need+=(chromium)
command -v ip >/dev/null || [[ -x /usr/sbin/ip || -x /sbin/ip ]] || [[ " ${need[*]} " == *" iproute2 "* ]] || need+=(iproute2)
apt_install "${need[@]}"

command -v cargo >/dev/null || die "cargo not found: this project needs the machine's rustup toolchain (>= 1.85)"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is not installed for the active toolchain"
cargo clippy --version >/dev/null 2>&1 || die "clippy is not installed for the active toolchain"
[[ $(node_major) -ge $MIN_NODE_MAJOR ]] || die "Node.js >= $MIN_NODE_MAJOR needed for interop/ts, found $(node --version 2>/dev/null || echo none)"

# ---------------------------------------------------------------------------------------------
# 2. Python venv with the pinned interop requirements (rebuilt only when they change).
# ---------------------------------------------------------------------------------------------
venv_works() {
  local probe rc=0
  probe="$(mktemp -d)"
  "$PYTHON" -m venv "$probe/v" >/dev/null 2>&1 || rc=1
  rm -rf "$probe"
  return $rc
}
py_stamp="$VENV/.tether-requirements.sha256"
py_want="$(sha256sum "$PY_REQ" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 \
  || [[ "$(cat "$py_stamp" 2>/dev/null)" != "$py_want" ]]; then
  # `python3 -m venv` needs ensurepip, which Debian ships separately in python3-venv.
  if ! venv_works; then
    apt_install python3-venv
    venv_works || die "'$PYTHON -m venv' still fails after installing python3-venv"
  fi
  log "creating $VENV from $PY_REQ"
  "$PYTHON" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$PY_REQ"
  echo "$py_want" >"$py_stamp"
else
  log "python venv up to date ($VENV)"
fi

# ---------------------------------------------------------------------------------------------
# 3. npm packages for the TypeScript suite (npm ci only when the lockfile changes).
# ---------------------------------------------------------------------------------------------
ts_stamp="$TS_DIR/node_modules/.tether-package-lock.sha256"
ts_want="$(sha256sum "$TS_DIR/package-lock.json" | cut -d' ' -f1) node-$(node --version)"
if [[ ! -d "$TS_DIR/node_modules" ]] || [[ "$(cat "$ts_stamp" 2>/dev/null)" != "$ts_want" ]]; then
  log "npm ci in interop/ts"
  # playwright-core has no browser download step; the variable keeps it that way.
  (cd "$TS_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  echo "$ts_want" >"$ts_stamp"
else
  log "interop/ts node_modules up to date"
fi

# The control page's build (web/: esbuild and the Viam TypeScript SDK), for the stale-bundle check.
WEB_DIR="$ROOT/web"
web_stamp="$WEB_DIR/node_modules/.tether-package-lock.sha256"
web_want="$(sha256sum "$WEB_DIR/package-lock.json" | cut -d' ' -f1) node-$(node --version)"
if [[ ! -d "$WEB_DIR/node_modules" ]] || [[ "$(cat "$web_stamp" 2>/dev/null)" != "$web_want" ]]; then
  log "npm ci in web"
  (cd "$WEB_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$web_want" >"$web_stamp"
else
  log "web node_modules up to date"
fi

SETUP_S=$SECONDS
log "setup done in ${SETUP_S}s"

# ---------------------------------------------------------------------------------------------
# 4. The checks. Every step runs (so one report shows everything); any failure fails the script.
# ---------------------------------------------------------------------------------------------
declare -a RESULTS=()
FAILED=0
BUILD_OK=1

step() { # step NAME CMD...
  local name="$1"; shift
  log "$name: $*"
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  if [[ $rc -eq 0 ]]; then
    RESULTS+=("PASS  ${dt}s  $name")
  else
    RESULTS+=("FAIL  ${dt}s  $name (exit $rc)")
    FAILED=1
  fi
  return $rc
}

ts_suite() { (cd "$TS_DIR" && npm test); }

# The WebRTC suites create private network namespaces (`ip netns`): they need root, so a non-root
# run uses sudo for them (the tests start everything they need as that user).
py_webrtc_suite() {
  "${SUDO[@]}" env TETHER_BIN="$TETHER_BIN" "$VENV/bin/python" -m pytest "$ROOT/interop/python/test_webrtc.py" -v
}
ts_webrtc_suite() {
  (cd "$TS_DIR" && "${SUDO[@]}" env TETHER_BIN="$TETHER_BIN" CHROMIUM_BIN="$CHROMIUM_BIN" PATH="$PATH" npm run test:webrtc)
}

# The control page (web/, issue 18) in Chromium, loaded from a machine in a private namespace.
ts_page_suite() {
  (cd "$TS_DIR" && "${SUDO[@]}" env TETHER_BIN="$TETHER_BIN" CHROMIUM_BIN="$CHROMIUM_BIN" PATH="$PATH" npm run test:page)
}
# The committed bundle (crates/machine/assets/) must be what web/ builds today.
page_bundle_fresh() { (cd "$WEB_DIR" && node build.mjs --check); }

# The netns suites (crates/tether/tests/nat.rs, faults.rs) are #[ignore]d in plain `cargo test` and
# need root: as root run them with cargo, otherwise build them as this user and run the test
# binary with sudo. faults.rs runs examples/fault_client (under cargo it builds it itself).
netns_suite() { # netns_suite TEST
  local test="$1" args=(--ignored --nocapture --test-threads=1) bin
  if [[ ${#SUDO[@]} -eq 0 ]]; then
    cargo test -p tether --test "$test" -- "${args[@]}"
  else
    cargo build -p tether --examples || return 1
    bin="$(cargo test -p tether --test "$test" --no-run 2>&1 | sed -n "s/.*Executable tests\/$test\.rs (\(.*\))\$/\1/p" | tail -1)"
    [[ -n "$bin" ]] || { echo "cannot find the $test test binary" >&2; return 1; }
    "${SUDO[@]}" "$bin" "${args[@]}"
  fi
}

# The layers' promises, checked on their dependency trees: tether-components is the crate a driver
# author depends on (no gRPC stack, HTTP, TLS, WebRTC or Redis; see tether-proto's `grpc` feature),
# and tether-wire is the sans-IO layer (no runtime at all either).
components_link_no_transport() {
  local hits
  hits="$(cargo tree -p tether-components -e normal | grep -Ei 'webrtc|hyper|rustls|redis|tonic|h2 ' || true)"
  [[ -z "$hits" ]] || { printf 'tether-components pulls in:\n%s\n' "$hits" >&2; return 1; }
  hits="$(cargo tree -p tether-wire -e normal | grep -Ei 'webrtc|hyper|rustls|redis|tonic|h2 |tokio|mio' || true)"
  [[ -z "$hits" ]] || { printf 'tether-wire pulls in:\n%s\n' "$hits" >&2; return 1; }
}

step "cargo fmt" cargo fmt --all -- --check || true
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings || true
step "cargo build" cargo build --workspace --all-targets || BUILD_OK=0
step "layer dependency trees (tether-components, tether-wire)" components_link_no_transport || true
step "control page bundle up to date (web/build.mjs --check)" page_bundle_fresh || true
step "cargo test" cargo test --workspace || true
step "nat traversal (netns + nftables + coturn)" netns_suite nat || true
step "fault injection (netns: link cuts, nftables drops, restarts)" netns_suite faults || true

if [[ $BUILD_OK -ne 1 ]]; then
  why="cargo build failed"
elif [[ ! -x "$TETHER_BIN" ]]; then
  why="no tether binary at $TETHER_BIN"
else
  why=""
fi
if [[ -z "$why" ]]; then
  step "python interop (viam-sdk)" "$VENV/bin/python" -m pytest "$ROOT/interop/python" -v \
    --ignore="$ROOT/interop/python/test_webrtc.py" || true
  step "python interop over WebRTC (viam-sdk, netns)" py_webrtc_suite || true
  step "typescript interop (@viamrobotics/sdk)" ts_suite || true
  step "typescript interop over WebRTC (@viamrobotics/sdk in Chromium, netns)" ts_webrtc_suite || true
  step "control page in Chromium (web/, netns)" ts_page_suite || true
else
  RESULTS+=("FAIL  0s  python interop (not run: $why)")
  RESULTS+=("FAIL  0s  python interop over WebRTC (not run: $why)")
  RESULTS+=("FAIL  0s  typescript interop (not run: $why)")
  RESULTS+=("FAIL  0s  typescript interop over WebRTC (not run: $why)")
  RESULTS+=("FAIL  0s  control page in Chromium (not run: $why)")
  FAILED=1
fi
# Every cargo-fuzz target for 20 s, unoptimized so that a cold build stays short (scripts/fuzz.sh: nightly if installed, else stable with
# RUSTC_BOOTSTRAP=1; installs cargo-fuzz if missing; crash inputs go to fuzz/artifacts/ or crates/wire/fuzz/artifacts/).
step "fuzz-smoke" env FUZZ_DEV=1 "$ROOT/scripts/fuzz.sh" 20 || true

printf '\n==================== test-all summary ====================\n'
printf '%s\n' "${RESULTS[@]}"
printf 'setup (packages, venv, npm): %ss\n' "$SETUP_S"
printf 'tether binary: %s\n' "$TETHER_BIN"
printf 'python %s, viam-sdk %s; node %s, @viamrobotics/sdk %s\n' \
  "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')" \
  "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("viam-sdk"))' 2>/dev/null || echo '?')" \
  "$(node --version)" \
  "$(node -p 'require(process.argv[1]).version' "$TS_DIR/node_modules/@viamrobotics/sdk/package.json" 2>/dev/null || echo '?')"
printf '%s; playwright-core %s, esbuild %s\n' \
  "$("$CHROMIUM_BIN" --version 2>/dev/null | head -1 || echo 'chromium ?')" \
  "$(node -p 'require(process.argv[1]).version' "$TS_DIR/node_modules/playwright-core/package.json" 2>/dev/null || echo '?')" \
  "$(node -p 'require(process.argv[1]).version' "$TS_DIR/node_modules/esbuild/package.json" 2>/dev/null || echo '?')"
if [[ $FAILED -ne 0 ]]; then
  printf 'RESULT: FAILED\n'
  exit 1
fi
printf 'RESULT: all passed\n'
