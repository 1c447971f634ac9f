#!/usr/bin/env bash
# Runs the cargo-fuzz targets of both fuzz packages for a while each (see fuzz/README.md):
#   crates/wire/fuzz   tether-wire's sans-IO targets (framing_server, framing_client), which link
#                      nothing of tether but tether-wire;
#   fuzz               the stack-level targets (sdp, candidate, signaling, config).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   # default: 60 s for every target of both packages
#   scripts/fuzz.sh 600                     # a full run: ten minutes each
#   scripts/fuzz.sh 30 signaling framing_server   # some targets, from whichever package has them
#
# Toolchain: cargo-fuzz needs nightly compiler flags. With a nightly toolchain installed this uses
# `cargo +nightly fuzz`; otherwise it runs cargo-fuzz on the active (stable) toolchain with
# RUSTC_BOOTSTRAP=1, and without AddressSanitizer if that toolchain cannot build with it.
# cargo-fuzz is installed (`cargo install cargo-fuzz --locked`) when missing.
#
# Each target reads the committed seeds (PKG/corpus/TARGET, PKG being the target's package
# directory) and keeps what it learns in PKG/target/corpus/TARGET (not committed). A crash,
# timeout (an input running over FUZZ_TIMEOUT seconds, default 10) or out-of-memory fails the
# target and is saved under PKG/artifacts/TARGET/; the script prints where and how to reproduce
# it, runs the remaining targets and exits non-zero. Logs: PKG/target/logs/TARGET.log (and
# PKG/target/logs/build.log).
#
# Environment: FUZZ_TIMEOUT (seconds per input, default 10), FUZZ_FLAGS (more libFuzzer flags,
# e.g. "-jobs=2 -workers=2" (two processes on one corpus, -runs=N applying to each), "-fork=2"
# (workers on one corpus, -runs=N counting all of their inputs), "-rss_limit_mb=4096" or
# "-runs=10000000" for a fixed number of inputs, SECONDS then being an upper bound), FUZZ_DEV=1
# (unoptimized build, for quick smokes), FUZZ_NIGHTLY=0 (use the stable path even with a nightly
# toolchain installed, as on CI).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The fuzz packages, in the order their targets run. A target name must be unique across them.
PKGS=("$ROOT/crates/wire/fuzz" "$ROOT/fuzz")

SECS=60
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  SECS=$1
  shift
fi
TIMEOUT="${FUZZ_TIMEOUT:-10}"
read -r -a EXTRA <<<"${FUZZ_FLAGS:-}"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'fuzz.sh: %s\n' "$*" >&2; exit 2; }
rel() { printf '%s' "${1#"$ROOT"/}"; } # a path relative to the repository root

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
# Build flags common to both packages; each package also gets `--target-dir PKG/target`, so
# everything fuzz-related lives in PKG/target, whatever CARGO_TARGET_DIR says.
FUZZ_ARGS=()
# FUZZ_DEV=1: an unoptimized build (cargo fuzz --dev). It compiles several times faster, which
# is what a short smoke run needs on a cold cache; long runs want the optimized default.
if [[ ${FUZZ_DEV:-0} == 1 ]]; then
  FUZZ_ARGS+=(--dev)
  how_dev=", unoptimized (--dev)"
fi
cargo_fuzz() { # PKG SUBCOMMAND [ARG...]: cargo fuzz SUBCOMMAND in package PKG
  local pkg=$1 sub=$2
  shift 2
  (cd "$pkg" && "${CARGO[@]}" fuzz "$sub" "${FUZZ_ARGS[@]}" --target-dir "$pkg/target" "$@")
}

# ---- targets: every target of every package, and which package has it ----
declare -A PKG_OF=() # target -> package directory
declare -A PKG_ALL=() # package directory -> how many targets it has
ALL=()
for pkg in "${PKGS[@]}"; do
  mapfile -t found < <(cd "$pkg" && "${CARGO[@]}" fuzz list)
  [[ ${#found[@]} -gt 0 ]] || die "no fuzz targets found in $(rel "$pkg")"
  PKG_ALL[$pkg]=${#found[@]}
  for t in "${found[@]}"; do
    [[ -z ${PKG_OF[$t]:-} ]] || die "target '$t' is in both $(rel "${PKG_OF[$t]}") and $(rel "$pkg")"
    PKG_OF[$t]=$pkg
    ALL+=("$t")
  done
done
if [[ $# -gt 0 ]]; then
  TARGETS=("$@")
  for t in "${TARGETS[@]}"; do
    [[ -n ${PKG_OF[$t]:-} ]] || die "unknown target '$t' (targets: ${ALL[*]})"
  done
else
  TARGETS=("${ALL[@]}")
fi

# ---- build (AddressSanitizer unless the toolchain cannot do it) ----
build_pkg() { # PKG: the requested targets of one package (all of them in one cargo run when that is all)
  local pkg=$1 t
  local -a want=()
  for t in "${TARGETS[@]}"; do [[ ${PKG_OF[$t]} != "$pkg" ]] || want+=("$t"); done
  [[ ${#want[@]} -gt 0 ]] || return 0
  log "building $(rel "$pkg"): ${want[*]} ($how${how_dev:-})"
  mkdir -p "$pkg/target/logs"
  local build_log="$pkg/target/logs/build.log"
  if [[ ${#want[@]} -eq ${PKG_ALL[$pkg]} ]]; then
    cargo_fuzz "$pkg" build >"$build_log" 2>&1 || { build_failed "$build_log"; return 1; }
  else
    for t in "${want[@]}"; do cargo_fuzz "$pkg" build "$t" >>"$build_log" 2>&1 || { build_failed "$build_log"; return 1; }; done
  fi
}
build_failed() { # LOG: what made a build fail. The log's tail alone is often cargo-fuzz's own error
  # backtrace (when RUST_BACKTRACE is set), so print the compiler's and cargo's error lines first,
  # then the tail without backtrace frames, and the free disk space (a full disk is a common cause).
  local log=$1
  grep -E -A6 -m 10 '^error(\[E[0-9]+\])?:|^Error:|panicked at|No space left|LLVM ERROR|signal: [0-9]+' "$log" >&2 || true
  printf -- '--- last lines (backtrace frames left out) ---\n' >&2
  grep -v -E '^ +[0-9]+: |^ +at ' "$log" | tail -n 15 >&2 || true
  printf -- '--- free disk space ---\n' >&2
  df -h "$ROOT" >&2 || true
}
build() { # every package; stops at the first that fails, printing where its log is
  local pkg
  for pkg in "${PKGS[@]}"; do
    rm -f "$pkg/target/logs/build.log"
    build_pkg "$pkg" || { printf 'build log: %s\n' "$(rel "$pkg")/target/logs/build.log" >&2; return 1; }
  done
}
if ! build; then
  [[ ${CARGO[*]} != "cargo +nightly" ]] || die "build failed"
  log "the build with AddressSanitizer failed on this toolchain; building without a sanitizer (-s none)"
  FUZZ_ARGS+=(-s none)
  how+=", no sanitizer"
  build || die "build failed"
fi

# ---- run ----
declare -a SUMMARY=()
FAILED=0
for t in "${TARGETS[@]}"; do
  pkg="${PKG_OF[$t]}"
  seeds="$pkg/corpus/$t"
  scratch="$pkg/target/corpus/$t"
  mkdir -p "$seeds" "$scratch" "$pkg/artifacts/$t"
  tlog="$pkg/target/logs/$t.log"
  log "$t: ${SECS}s (seeds: $(rel "$seeds"), log: $(rel "$tlog"))"
  rc=0
  cargo_fuzz "$pkg" run "$t" "$scratch" "$seeds" -- \
    -max_total_time="$SECS" -timeout="$TIMEOUT" -print_final_stats=1 "${EXTRA[@]}" >"$tlog" 2>&1 || rc=$?
  # -jobs=N: libFuzzer runs N processes on the shared corpus, each logging to fuzz-JOB.log in the
  # working directory (PKG), and copies each job's log into its own output once the job is done.
  rm -f "$pkg"/fuzz-[0-9]*.log
  # Inputs: the sum over processes (one, or one per job); how long: the longest (less than SECS
  # when FUZZ_FLAGS has -runs=N).
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$tlog" | awk '{ n += $1 } END { if (NR) print n }')"
  took="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$tlog" | sort -n | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$tlog" | tail -1)"
  if [[ $(grep -c '^stat::number_of_executed_units:' "$tlog") -gt 1 && ${took:-0} -gt 0 ]]; then
    rate=$((runs / took))
  fi
  if [[ -z $runs ]]; then
    # Fork mode (-fork=N) prints no final stats. Its progress lines ("#RUNS: cov: …") count the
    # inputs of every worker, and it ends with "INFO: exiting: CODE time: SECONDSs".
    runs="$(sed -n 's/^#\([0-9]*\): cov: .*/\1/p' "$tlog" | tail -1)"
    took="$(sed -n 's/^INFO: exiting: [0-9]* time: \([0-9]*\)s.*/\1/p' "$tlog" | tail -1)"
    if [[ -n $runs && ${took:-0} -gt 0 ]]; then rate=$((runs / took)); fi
  fi
  if [[ $rc -eq 0 ]]; then
    SUMMARY+=("PASS  $t ($(rel "$pkg")): ${runs:-?} runs in ${took:-$SECS}s (${rate:-?}/s)")
    grep -E "^#[0-9]+[[:space:]]+DONE" "$tlog" | tail -1 || true
  else
    FAILED=1
    SUMMARY+=("FAIL  $t ($(rel "$pkg"), exit $rc)")
    # What went wrong (panic message / sanitizer report), then where the input is.
    grep -E -A1 -m 6 "panicked at|ERROR: |SUMMARY: " "$tlog" || tail -n 30 "$tlog"
    artifacts="$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$tlog")"
    if [[ -n $artifacts ]]; then
      while read -r a; do
        printf 'crashing input saved to: %s\n' "$a"
        printf 'reproduce: (cd %s && %s fuzz run %s %s)\n' "$(rel "$pkg")" "${CARGO[*]}" "$t" "${a#"$pkg"/}"
      done <<<"$artifacts"
    else
      printf 'no input was saved (build or harness failure?); see %s\n' "$tlog"
    fi
  fi
done

printf '\n==================== fuzz summary (%s) ====================\n' "$how"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
