#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang (AddressSanitizer + UBSan, torch-free build in
# build-fuzz/) and runs each for SECONDS (default 60), FUZZ_JOBS (default 2) at a time, starting
# from its seed corpus fuzz/corpus/NAME. Fails if any target finds a crash, leak, timeout or UB.
#   scripts/run_fuzzers.sh [SECONDS] [NAME...]     e.g. scripts/run_fuzzers.sh 3600 gguf query
# What each run learns is kept in build-fuzz/corpus/NAME (so later runs start from there), its log
# in build-fuzz/logs/NAME.log, and a crashing input in build-fuzz/artifacts/NAME/, which
# reproduces with build-fuzz/fuzz/NAME_fuzzer FILE (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
build="${FUZZ_BUILD:-build-fuzz}"
jobs="${FUZZ_JOBS:-2}"
all_targets=(query spec_json model_config safetensors tokenizer_json tokenizer_model gguf)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

cxx="${FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || true)}"
if [ -z "$cxx" ]; then
  echo "run_fuzzers: no clang++ found; install clang-14 and libclang-rt-14-dev (scripts/install_deps.sh)" >&2
  exit 1
fi
cc="${cxx/clang++/clang}"

start=$(date +%s)
# The same configuration as scripts/sanitize.sh (one build-fuzz/ serves both).
CC="$cc" CXX="$cxx" cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLESION_WITH_TORCH=OFF -DLESION_FUZZ=ON -DLESION_BUILD_TESTS=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target lesion_fuzzers
echo "run_fuzzers: built in $(($(date +%s) - start)) s; running ${#targets[@]} targets for ${seconds} s each, ${jobs} at a time"

# Leaks count as failures (LeakSanitizer runs at exit); UBSan prints where.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

run_one() {
  local name="$1" work="$build/corpus/$1" artifacts="$build/artifacts/$1/" log="$build/logs/$1.log"
  mkdir -p "$work" "$artifacts" "$build/logs"
  # The scratch corpus comes first, so new inputs land there and fuzz/corpus stays as committed.
  # -timeout: one input taking longer is a hang; -rss_limit_mb: memory grown without bound.
  # bash's `time` reports the CPU seconds the run got (the machine may be busy with more).
  local TIMEFORMAT='%U %S'
  if { time "$build/fuzz/${name}_fuzzer" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$artifacts" "$work" "fuzz/corpus/$name" >"$log" 2>&1; } 2>"$log.cpu"; then
    local runs cpu
    runs="$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$log" | grep -Eo '[0-9]+$')"
    cpu="$(awk '{printf "%.0f", $1 + $2}' "$log.cpu")"
    echo "run_fuzzers: $name clean: $runs runs in ${cpu} CPU seconds"
  else
    echo "run_fuzzers: $name FAILED (log $log, input in $artifacts):" >&2
    grep -E -B8 -A30 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log" | head -70 >&2
    return 1
  fi
}

# At most $jobs runs at a time; each failing run appends its name to $failed_list.
failed_list="$build/logs/failed"
mkdir -p "$build/logs"
: >"$failed_list"
for name in "${targets[@]}"; do
  if [ ! -d "fuzz/corpus/$name" ]; then
    echo "run_fuzzers: unknown target $name (known: ${all_targets[*]})" >&2
    exit 1
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  { run_one "$name" || echo "$name" >>"$failed_list"; } &
done
wait

echo "run_fuzzers: done in $(($(date +%s) - start)) s"
if [ -s "$failed_list" ]; then
  echo "run_fuzzers: failed: $(tr '\n' ' ' <"$failed_list")" >&2
  exit 1
fi
