#!/usr/bin/env bash
# The unit tests of the threaded, gRPC-free code (storage_test: the read pool and the store;
# tsan_server_test: server_test without service_test.cc, i.e. the store writer, tracker, baseline
# cache, fair queue, sweep shards, auth and config) built with clang's ThreadSanitizer and run by
# ctest, in build-tsan/ (cmake/LesionTsan.cmake says what is built and why).
#
# TSan only sees the happens-before of instrumented or intercepted code, and absl::Mutex is Abseil's
# own code: with Debian's uninstrumented libabsl every absl::Mutex-guarded field is a false race. So
# this script first builds Debian's exact Abseil source (the orig tarball of libabsl-dev
# 20220623.1, downloaded once into build-tsan/downloads/) with -fsanitize=thread, static, into
# build-tsan/absl, with Debian's options.h settings (absl::string_view, optional, any and variant as
# types of their own, hardened) but an inline namespace of its own, so that Debian's Abseil headers
# or libraries cannot be mixed in silently, and with upstream's fix of absl::Mutex's TSan
# annotations (abseil-cpp bb7be494, Nov 2022, after this release: without it every contended
# Mutex reports a false race on the waiter's semaphore). The prefix is reused while its stamp
# matches. gRPC (Debian, uninstrumented, linked to Debian's shared Abseil) stays out of every test
# binary; the tests that need it (service_test, metrics_test, remote_client_test, grpc_status_test)
# are not built here.
#   scripts/tsan.sh            (make tsan)
# TSAN_OPTIONS defaults to halt_on_error=1 second_deadlock_stack=1; TSAN_BUILD, TSAN_CXX and
# ABSEIL_URL override the build folder, the compiler and the tarball's address.
set -euo pipefail
cd "$(dirname "$0")/.."

build="${TSAN_BUILD:-build-tsan}"
cxx="${TSAN_CXX:-$(command -v clang++-14 || command -v clang++ || true)}"
if [ -z "$cxx" ]; then
  echo "tsan: no clang++ found; install clang-14 and libclang-rt-14-dev (scripts/install_deps.sh)" >&2
  exit 1
fi
cc="${cxx/clang++/clang}"
jobs="$(nproc)"

absl_version=20220623.1
absl_sha256=abfe2897f3a30edaa74bc34365afe3c2a3cd012091a97dc7e008f7016adcd5fe
absl_url="${ABSEIL_URL:-http://deb.debian.org/debian/pool/main/a/abseil/abseil_${absl_version}.orig.tar.gz}"
absl_flags="-fsanitize=thread -fno-omit-frame-pointer -O1 -gline-tables-only"
case "$build" in /*) absl_prefix="$build/absl" ;; *) absl_prefix="$(pwd)/$build/absl" ;; esac
# What the prefix was built from; a change rebuilds it.
absl_stamp="abseil $absl_version $absl_sha256 | $("$cxx" --version | head -1) | $absl_flags | c++20 |
options: std types off, hardened, namespace lesion_tsan | patch: mutex IncrementSynchSem (bb7be494)"

installed="$(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null || true)"
case "$installed" in
  "$absl_version"*) ;;
  *) echo "tsan: warning: libabsl-dev is ${installed:-not installed}, this build's Abseil is $absl_version" >&2 ;;
esac

start=$(date +%s)
absl_seconds=cached
if [ "$(cat "$absl_prefix/.stamp" 2>/dev/null)" != "$absl_stamp" ]; then
  absl_start=$(date +%s)
  tarball="$build/downloads/abseil_${absl_version}.orig.tar.gz"
  if ! echo "$absl_sha256  $tarball" | sha256sum --check --status 2>/dev/null; then
    mkdir -p "$build/downloads"
    curl -fsSL --retry 3 -o "$tarball.part" "$absl_url"
    echo "$absl_sha256  $tarball.part" | sha256sum --check --quiet
    mv "$tarball.part" "$tarball"
  fi
  src="$build/absl-src"
  rm -rf "$src" "$build/absl-build" "$absl_prefix"
  mkdir -p "$src"
  tar -xzf "$tarball" -C "$src" --strip-components=1
  # Debian's options (debian/patches/configure.diff) except the namespace name.
  sed -i -E -e 's/^(#define ABSL_OPTION_USE_STD_(ANY|OPTIONAL|STRING_VIEW|VARIANT)) 2$/\1 0/' \
    -e 's/^(#define ABSL_OPTION_INLINE_NAMESPACE_NAME) .*/\1 lesion_tsan/' \
    -e 's/^(#define ABSL_OPTION_HARDENED) 0$/\1 1/' "$src/absl/base/options.h"
  [ "$(grep -cE '^#define ABSL_OPTION_(USE_STD_[A-Z_]+ 0|HARDENED 1|INLINE_NAMESPACE_NAME lesion_tsan)$' \
    "$src/absl/base/options.h")" -eq 6 ] || { echo "tsan: absl/base/options.h not as expected" >&2; exit 1; }
  # Upstream abseil-cpp bb7be494 ("absl: fix Mutex TSan annotations").
  patch -s -p1 -d "$src" <<'EOF'
--- a/absl/synchronization/mutex.cc
+++ b/absl/synchronization/mutex.cc
@@ -562,10 +562,15 @@
 void Mutex::IncrementSynchSem(Mutex *mu, PerThreadSynch *w) {
   if (mu) {
     ABSL_TSAN_MUTEX_PRE_DIVERT(mu, 0);
-  }
-  PerThreadSem::Post(w->thread_identity());
-  if (mu) {
+    // We miss synchronization around passing PerThreadSynch between threads
+    // since it happens inside of the Mutex code, so we need to ignore all
+    // accesses to the object.
+    ABSL_ANNOTATE_IGNORE_READS_AND_WRITES_BEGIN();
+    PerThreadSem::Post(w->thread_identity());
+    ABSL_ANNOTATE_IGNORE_READS_AND_WRITES_END();
     ABSL_TSAN_MUTEX_POST_DIVERT(mu, 0);
+  } else {
+    PerThreadSem::Post(w->thread_identity());
   }
 }
 
EOF
  CC="$cc" CXX="$cxx" cmake -S "$src" -B "$build/absl-build" -G Ninja -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_CXX_FLAGS="$absl_flags" -DCMAKE_CXX_STANDARD=20 \
    -DABSL_PROPAGATE_CXX_STD=ON -DABSL_BUILD_TESTING=OFF -DBUILD_TESTING=OFF -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_INSTALL_PREFIX="$absl_prefix" -Wno-dev -Wno-deprecated >/dev/null
  cmake --build "$build/absl-build" -j "$jobs"
  cmake --install "$build/absl-build" >/dev/null
  rm -rf "$src" "$build/absl-build"
  echo "$absl_stamp" >"$absl_prefix/.stamp"
  absl_seconds="$(($(date +%s) - absl_start)) s"
fi

build_start=$(date +%s)
CC="$cc" CXX="$cxx" cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLESION_WITH_TORCH=OFF -DLESION_TSAN=ON -DLESION_BUILD_TESTS=ON -DCMAKE_PREFIX_PATH="$absl_prefix" >/dev/null
cmake --build "$build" --target tsan_tests -j "$jobs"
build_seconds=$(($(date +%s) - build_start))

export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1}"
# clang 14's TSan cannot map its shadow memory with more than 28 bits of mmap randomness (kernels
# from 6.5 on may use 32): run without address randomization there.
run=()
if [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)" -gt 28 ] && setarch "$(uname -m)" -R true 2>/dev/null; then
  run=(setarch "$(uname -m)" -R)
fi
test_start=$(date +%s)
"${run[@]}" ctest --test-dir "$build" --output-on-failure -j "$jobs"
echo "tsan: Abseil ${absl_seconds}, project built in ${build_seconds} s, tests ran in" \
  "$(($(date +%s) - test_start)) s; $(($(date +%s) - start)) s in all"
