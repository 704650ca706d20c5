#!/usr/bin/env bash
# Downloads the Debian 12 packages that deploy/build_gpu_host.sh unpacks on an offline GPU host.
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
  libgtest-dev libgmock-dev
echo "$(ls | wc -l) packages in $repo/.debs"
