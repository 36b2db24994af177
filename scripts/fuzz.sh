#!/usr/bin/env bash
# Run Keyline's fuzz targets (fuzz/) with libFuzzer on the stable
# toolchain: coverage instrumentation through rustc's sancov pass, no
# nightly needed (`cargo fuzz run TARGET` works too where cargo-fuzz and
# nightly are installed).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     each target SECONDS (default 30)
#   scripts/fuzz.sh --repro TARGET FILE       run one input (e.g. a crash)
#
# Inputs start from the seeds kept in fuzz/seeds/TARGET and grow in
# fuzz/corpus/TARGET (not kept). A crash leaves fuzz/artifacts/TARGET/crash-*
# and fails the run. Two targets run at a time.
set -euo pipefail
start_dir="$PWD"
cd "$(dirname "$0")/../fuzz"

triple="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$PWD/target"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
bin="$CARGO_TARGET_DIR/$triple/release"
all_targets=$(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | grep -v '^keyline-proto-fuzz$')

# --target keeps the instrumentation off build scripts and proc macros.
cargo build --release --quiet --target "$triple" --bins

if [ "${1:-}" = "--repro" ]; then
  case "$3" in /*) input="$3" ;; *) input="$start_dir/$3" ;; esac
  KEYLINE_FUZZ_TRACE=1 "$bin/$2" "$input"
  exit
fi

seconds="${1:-30}"
shift || true
targets="${*:-$all_targets}"

run_one() {
  local t="$1"
  mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
  local log="artifacts/$t/last-run.log"
  if "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
      "corpus/$t" "seeds/$t" >"$log" 2>&1; then
    local runs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz $t: ${runs:-?} runs in ${seconds}s, nothing found"
  else
    echo "fuzz $t: FAILED (see fuzz/$log):"
    grep -E "panicked|invariant|ERROR|SUMMARY|Test unit written" "$log" | head -8
    return 1
  fi
}

failed=0
pids=()
names=()
for t in $targets; do
  run_one "$t" &
  pids+=($!)
  names+=("$t")
  if [ "${#pids[@]}" -ge 2 ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
  fi
done
for p in "${pids[@]}"; do
  wait "$p" || failed=1
done
exit "$failed"
