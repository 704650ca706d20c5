#!/usr/bin/env bash
# Builds lesion on an offline GPU host that has a CUDA PyTorch wheel, a compiler, CMake and ninja,
# but none of the Debian C++ dependencies (see docs/gpu.md).
#
#   deploy/fetch_debs.sh            # on a machine with Debian 12's archive: fills .debs/
#   deploy/build_gpu_host.sh [BUILD_DIR]   # on the GPU host, with .debs/ copied beside the repo
#
# The .deb files are unpacked into a prefix (never into /), their pkg-config files are pointed at
# that prefix, and CMake finds LibTorch (CUDA) through the host's python3.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build-gpu}"
debs="${LESION_DEBS:-$repo/.debs}"
prefix="${LESION_DEPS_PREFIX:-/opt/lesion-deps}"
python="${PYTHON:-python3}"

if [ ! -d "$debs" ] || ! ls "$debs"/*.deb >/dev/null 2>&1; then
  echo "no .deb files in $debs: run deploy/fetch_debs.sh on a Debian 12 machine first" >&2
  exit 1
fi
mkdir -p "$prefix"
for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$prefix"; done
libdir="$prefix/usr/lib/x86_64-linux-gnu"
for pc in "$libdir"/pkgconfig/*.pc; do
  sed -i "s|^prefix=/usr\$|prefix=$prefix/usr|; s|=/usr/lib/x86_64-linux-gnu|=$libdir|g; s|-L/usr/lib/x86_64-linux-gnu|-L$libdir|g" "$pc"
done
# Debian's CMake package files name absolute /usr paths; redirect them to the prefix.
grep -rl '/usr/' "$libdir/cmake" 2>/dev/null | while read -r f; do
  sed -i "s|\"/usr/|\"$prefix/usr/|g; s|/usr/lib/x86_64-linux-gnu|$libdir|g; s|/usr/include|$prefix/usr/include|g" "$f"
done
export PATH="$prefix/usr/bin:$PATH"
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# Libraries named as -lNAME (gRPC's re2, for one) are found in the prefix by the linker too.
export LIBRARY_PATH="$libdir${LIBRARY_PATH:+:$LIBRARY_PATH}"

torch_prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
echo "LibTorch from $torch_prefix ($("$python" -c 'import torch; print(torch.__version__)'))"
cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" \
  -DProtobuf_PROTOC_EXECUTABLE="$prefix/usr/bin/protoc" \
  -DCMAKE_CUDA_ARCHITECTURES=90 \
  ${LESION_CMAKE_ARGS:-}
cmake --build "$build" -j "$(nproc)"
echo "built into $build; run binaries with LD_LIBRARY_PATH=$libdir"
