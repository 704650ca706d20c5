#!/usr/bin/env bash
# Downloads the Debian 12 packages that deploy/build_gpu_host.sh unpacks on an offline GPU host.
# prometheus-cpp (lesiond's /metrics) brings civetweb, curl and push: its CMake package asks for
# them (find_dependency) and civetweb's names the civetweb binary, though lesiond links only core
# and pull (those need only libc, libstdc++ and zlib at run time).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$repo/.debs"
cd "$repo/.debs"
apt-get download \
  libgrpc++-dev libgrpc-dev libgrpc++1.51 libgrpc29 protobuf-compiler-grpc libupb0 \
  libabsl-dev libabsl20220623 libc-ares2 libc-ares-dev libre2-9 libre2-dev \
  libsqlite3-dev libprotobuf-dev libprotobuf32 libprotobuf-lite32 libprotoc32 protobuf-compiler \
  zlib1g-dev libssl-dev nlohmann-json3-dev \
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 \
  libgtest-dev libgmock-dev \
  prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 \
  libcivetweb-dev libcivetweb1 civetweb libcurl4-openssl-dev libcurl4
echo "$(ls | wc -l) packages in $repo/.debs"
