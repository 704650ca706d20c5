#!/usr/bin/env bash
# Installs the Debian packages the C++ build needs, if any is missing. Needs root (or sudo).
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libssl-dev libabsl-dev libsqlite3-dev libgtest-dev libgmock-dev nlohmann-json3-dev libpcre2-dev
  clang-14 libclang-rt-14-dev  # the fuzz and sanitizer builds: libFuzzer and the sanitizers
  clang-format-14              # make format / make lint (scripts/format.sh): one pinned version
  curl                         # make tsan (scripts/tsan.sh): Debian's Abseil source, once
  prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
