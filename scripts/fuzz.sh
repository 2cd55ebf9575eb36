#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (one per parser of outside input) for
# SECONDS each (default 600, the long form; scripts/test.sh runs a short one),
# two at a time, starting from the checked-in corpora in fuzz/corpus/.
#   scripts/fuzz.sh [--dev] [SECONDS] [TARGET...]
# --dev builds unoptimized: quicker to build, slower to run (the short form).
# New inputs go to fuzz/target/corpus/ (not checked in); FUZZ_KEEP=1 merges
# them into fuzz/corpus/, minimized. Crashes are written to fuzz/artifacts/
# and fail the run. Each target's last libFuzzer stats line is printed.
#
# Built without a sanitizer but with debug assertions: the code under test is
# safe Rust, so what a run can find is a panic, a failed assertion, an
# arithmetic overflow, a stack overflow or a hang, none of which needs ASan.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=--release
if [ "${1:-}" = --dev ]; then
  profile=--dev
  shift
fi
seconds="${1:-600}"
shift || true

version=0.13.2
fuzz=.tools/bin/cargo-fuzz
if ! "$fuzz" --version 2>/dev/null | grep -qF "$version"; then
  cargo install --locked --quiet --root .tools cargo-fuzz --version "$version"
fi
# cargo-fuzz passes flags of nightly rustc; the machine has a stable toolchain.
export RUSTC_BOOTSTRAP=1
fuzz="$PWD/$fuzz"
cd fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("$fuzz" list)
flags=(--sanitizer none --debug-assertions "$profile")
"$fuzz" build "${flags[@]}"

run() {
  local target=$1 scratch=target/corpus/$1
  mkdir -p "$scratch" "artifacts/$target"
  # The scratch folder first: libFuzzer writes what it finds to the first.
  if ! "$fuzz" run "${flags[@]}" "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"target/$target.log" 2>&1; then
    echo "$target: FAILED (fuzz/target/$target.log, fuzz/artifacts/$target)"
    grep -E "panicked|ERROR|SUMMARY" "target/$target.log" | head -5
    return 1
  fi
  echo "$target: $(grep -E '^#[0-9]+.*(DONE|pulse)' "target/$target.log" | tail -1)"
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "target/$target.log" | tr '\n' ' '
  echo
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    # The fewest inputs that still reach every edge found (set cover, edges
    # only: counting hit counts and comparisons as well keeps thousands).
    local kept=target/kept/$target
    rm -rf "$kept" && mkdir -p "$kept"
    "$fuzz" run "${flags[@]}" "$target" "$kept" "corpus/$target" "$scratch" -- \
      -set_cover_merge=1 -use_counters=0 -use_cmp=0 -max_len=16384 >/dev/null 2>&1
    rm -rf "corpus/$target" && mv "$kept" "corpus/$target"
  fi
}

failed=0
pids=()
for target in "${targets[@]}"; do
  run "$target" &
  pids+=($!)
  # Two at a time: the machine has two cores.
  if [ ${#pids[@]} -eq 2 ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[1]}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit "$failed"
