#!/usr/bin/env bash
# Runs fuzzers built on another machine (scripts/run_fuzzers.sh's build-fuzz/fuzz/*_fuzzer) on a
# host without clang but with more cores, e.g. an offline lab server: every target at once, each
# with FORKS workers (libFuzzer -fork), for SECONDS, from a corpus tarball, leaving the grown corpus
# as a tarball for the next run and failing if any target finds a crash, leak, timeout or UB.
#   fuzz/run_prebuilt.sh BIN_DIR CORPUS.tgz OUT_DIR [SECONDS] [FORKS]
# BIN_DIR holds the *_fuzzer binaries; CORPUS.tgz a corpus/NAME/ tree (tar czf corpus.tgz -C
# build-fuzz corpus); OUT_DIR receives NAME.log, crashing inputs and corpus.tgz. The binaries link
# Debian 12's Abseil and protobuf: on another distribution the packages in LESION_DEBS (default
# .debs/, deploy/fetch_debs.sh; the runtime ones suffice) are unpacked into LESION_DEPS_PREFIX
# (default /opt/lesion-deps) first, as deploy/build_gpu_host.sh does.
set -uo pipefail
bin="$1" corpus="$2" out="$3" seconds="${4:-540}" forks="${5:-2}"
cd "$(dirname "$0")/.."
prefix="${LESION_DEPS_PREFIX:-/opt/lesion-deps}"
debs="${LESION_DEBS:-.debs}"
if [ -d "$debs" ] && [ ! -d "$prefix/usr/lib/x86_64-linux-gnu" ]; then
  for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix"; done
fi
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
work="$(mktemp -d)"
tar xzf "$corpus" -C "$work"
mkdir -p "$out"
status=0
for fuzzer in "$bin"/*_fuzzer; do
  name="$(basename "$fuzzer" _fuzzer)"
  mkdir -p "$work/corpus/$name" "$out/$name-artifacts"
  (
    "$fuzzer" -fork="$forks" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$out/$name-artifacts/" "$work/corpus/$name" "fuzz/corpus/$name" >"$out/$name.log" 2>&1
    code=$?
    units="$(grep -Eo 'stat::number_of_executed_units: [0-9]+|exec/s: [0-9]+' "$out/$name.log" | tail -1)"
    echo "$name: exit $code, $(grep -Eo '#[0-9]+' "$out/$name.log" | tail -1) inputs run; $units"
    [ "$code" -eq 0 ]
  ) &
done
for job in $(jobs -p); do wait "$job" || status=1; done
tar czf "$out/corpus.tgz" -C "$work" corpus
rm -rf "$work"
exit "$status"
