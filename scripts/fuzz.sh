#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a while each (see fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   # default: 60 s for every target
#   scripts/fuzz.sh 600                     # a full run: ten minutes each
#   scripts/fuzz.sh 30 signaling config     # some targets
#
# Toolchain: cargo-fuzz needs nightly compiler flags. With a nightly toolchain installed this uses
# `cargo +nightly fuzz`; otherwise it runs cargo-fuzz on the active (stable) toolchain with
# RUSTC_BOOTSTRAP=1, and without AddressSanitizer if that toolchain cannot build with it.
# cargo-fuzz is installed (`cargo install cargo-fuzz --locked`) when missing.
#
# Each target reads the committed seeds (fuzz/corpus/TARGET) and keeps what it learns in
# fuzz/target/corpus/TARGET (not committed). A crash, timeout (an input running over
# FUZZ_TIMEOUT seconds, default 10) or out-of-memory fails the target and is saved under
# fuzz/artifacts/TARGET/; the script prints where and how to reproduce it, runs the remaining
# targets and exits non-zero. Logs: fuzz/target/logs/TARGET.log.
#
# Environment: FUZZ_TIMEOUT (seconds per input, default 10), FUZZ_FLAGS (more libFuzzer flags,
# e.g. "-jobs=2" or "-rss_limit_mb=4096"), FUZZ_DEV=1 (unoptimized build, for quick smokes), FUZZ_NIGHTLY=0 (use the stable path even with a
# nightly toolchain installed, as on CI).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
cd "$FUZZ"

SECS=60
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  SECS=$1
  shift
fi
TIMEOUT="${FUZZ_TIMEOUT:-10}"
read -r -a EXTRA <<<"${FUZZ_FLAGS:-}"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'fuzz.sh: %s\n' "$*" >&2; exit 2; }

command -v cargo >/dev/null || die "cargo not found"

# ---- toolchain ----
CARGO=(cargo)
if [[ ${FUZZ_NIGHTLY:-} != 0 ]] && command -v rustup >/dev/null && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  CARGO=(cargo +nightly)
  how="nightly toolchain"
else
  export RUSTC_BOOTSTRAP=1
  how="$(rustc --version 2>/dev/null || echo 'rustc ?') with RUSTC_BOOTSTRAP=1"
fi
if ! "${CARGO[@]}" fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# Everything fuzz-related lives in fuzz/target, whatever CARGO_TARGET_DIR says.
FUZZ_ARGS=(--target-dir "$FUZZ/target")
# FUZZ_DEV=1: an unoptimized build (cargo fuzz --dev). It compiles several times faster, which
# is what a short smoke run needs on a cold cache; long runs want the optimized default.
if [[ ${FUZZ_DEV:-0} == 1 ]]; then
  FUZZ_ARGS+=(--dev)
  how_dev=", unoptimized (--dev)"
fi

mapfile -t ALL < <("${CARGO[@]}" fuzz list)
[[ ${#ALL[@]} -gt 0 ]] || die "no fuzz targets found"
if [[ $# -gt 0 ]]; then
  TARGETS=("$@")
  for t in "${TARGETS[@]}"; do
    printf '%s\n' "${ALL[@]}" | grep -qx -- "$t" || die "unknown target '$t' (targets: ${ALL[*]})"
  done
else
  TARGETS=("${ALL[@]}")
fi

# ---- build (AddressSanitizer unless the toolchain cannot do it) ----
build() { # every requested target (all of them in one cargo run when that is all)
  if [[ ${#TARGETS[@]} -eq ${#ALL[@]} ]]; then
    "${CARGO[@]}" fuzz build "${FUZZ_ARGS[@]}"
  else
    local t
    for t in "${TARGETS[@]}"; do "${CARGO[@]}" fuzz build "${FUZZ_ARGS[@]}" "$t" || return 1; done
  fi
}
mkdir -p "$FUZZ/target/logs"
build_log="$FUZZ/target/logs/build.log"
log "building ${TARGETS[*]} ($how${how_dev:-})"
if ! build >"$build_log" 2>&1; then
  tail -n 30 "$build_log" >&2
  [[ ${CARGO[*]} != "cargo +nightly" ]] || die "build failed (log: $build_log)"
  log "the build with AddressSanitizer failed on this toolchain; building without a sanitizer (-s none)"
  FUZZ_ARGS+=(-s none)
  how+=", no sanitizer"
  build >"$build_log" 2>&1 || { tail -n 30 "$build_log" >&2; die "build failed (log: $build_log)"; }
fi

# ---- run ----
declare -a SUMMARY=()
FAILED=0
for t in "${TARGETS[@]}"; do
  seeds="$FUZZ/corpus/$t"
  scratch="$FUZZ/target/corpus/$t"
  mkdir -p "$seeds" "$scratch" "$FUZZ/artifacts/$t"
  tlog="$FUZZ/target/logs/$t.log"
  log "$t: ${SECS}s (seeds: fuzz/corpus/$t, log: ${tlog#"$ROOT"/})"
  rc=0
  "${CARGO[@]}" fuzz run "${FUZZ_ARGS[@]}" "$t" "$scratch" "$seeds" -- \
    -max_total_time="$SECS" -timeout="$TIMEOUT" -print_final_stats=1 "${EXTRA[@]}" >"$tlog" 2>&1 || rc=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$tlog" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$tlog" | tail -1)"
  if [[ $rc -eq 0 ]]; then
    SUMMARY+=("PASS  $t: ${runs:-?} runs in ${SECS}s (${rate:-?}/s)")
    grep -E "^#[0-9]+[[:space:]]+DONE" "$tlog" | tail -1 || true
  else
    FAILED=1
    SUMMARY+=("FAIL  $t (exit $rc)")
    # What went wrong (panic message / sanitizer report), then where the input is.
    grep -E -A1 -m 6 "panicked at|ERROR: |SUMMARY: " "$tlog" || tail -n 30 "$tlog"
    artifacts="$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$tlog")"
    if [[ -n $artifacts ]]; then
      while read -r a; do
        printf 'crashing input saved to: %s\n' "$a"
        printf 'reproduce: (cd fuzz && %s fuzz run %s %s)\n' "${CARGO[*]}" "$t" "${a#"$FUZZ"/}"
      done <<<"$artifacts"
    else
      printf 'no input was saved (build or harness failure?); see %s\n' "$tlog"
    fi
  fi
done

printf '\n==================== fuzz summary (%s) ====================\n' "$how"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
