#!/usr/bin/env bash
# The unit tests of the torch-free layers (common, proto, spec, storage, the model's readers,
# tokenizers and config, the server and the remote client) built with clang's AddressSanitizer and
# UndefinedBehaviorSanitizer and run by ctest. It is the fuzzers' build (build-fuzz/,
# cmake/LesionFuzz.cmake): every library of the tree is instrumented, UB aborts, and LeakSanitizer
# fails a test that leaks. LibTorch is not built with sanitizers, so the torch side stays out.
#   scripts/sanitize.sh            (make sanitize; make test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

build="${FUZZ_BUILD:-build-fuzz}"
cxx="${FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || true)}"
if [ -z "$cxx" ]; then
  echo "sanitize: no clang++ found; install clang-14 and libclang-rt-14-dev (scripts/install_deps.sh)" >&2
  exit 1
fi
start=$(date +%s)
CC="${cxx/clang++/clang}" CXX="$cxx" cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLESION_WITH_TORCH=OFF -DLESION_FUZZ=ON -DLESION_BUILD_TESTS=ON >/dev/null
cmake --build "$build" -j "$(nproc)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
echo "sanitize: built and tested in $(($(date +%s) - start)) s"
