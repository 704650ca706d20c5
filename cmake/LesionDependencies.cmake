# Every third-party dependency is found here, once. Nothing is downloaded at build time.
#   Torch:     the PyTorch wheel's LibTorch (pass -DCMAKE_PREFIX_PATH=$(python -c 'import
#              torch;print(torch.utils.cmake_prefix_path)')), or any LibTorch >= 2.4.
#   Abseil, protobuf, GoogleTest, nlohmann-json, PCRE2: Debian packages (or an unpacked prefix,
#              see deploy/build_gpu_host.sh).
find_package(Threads REQUIRED)
find_package(absl REQUIRED CONFIG)
find_package(Protobuf REQUIRED)
# gRPC (server/ and clients only): grpc++, grpc++_reflection and grpc_cpp_plugin (Debian: libgrpc++-dev,
# protobuf-compiler-grpc).
find_package(gRPC CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)  # SHA-256 of specs (libcrypto)
find_package(SQLite3 REQUIRED)  # the experiment store (storage/)
# CMake 4 renamed the imported target; older releases only have the first name.
if(TARGET SQLite3::SQLite3)
  set(LESION_SQLITE_TARGET SQLite3::SQLite3)
else()
  set(LESION_SQLITE_TARGET SQLite::SQLite3)
endif()
find_package(nlohmann_json REQUIRED)
# lesiond's /metrics endpoint (server/metrics.cc). Debian: prometheus-cpp-dev (its CMake package
# also asks for civetweb, CURL and ZLIB, whose -dev packages it depends on).
find_package(prometheus-cpp CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)

set(LESION_CUDA_KERNELS OFF)
if(LESION_WITH_TORCH)
  find_package(Torch REQUIRED)
  if(Torch_VERSION VERSION_LESS 2.4)
    message(FATAL_ERROR "lesion needs LibTorch >= 2.4, found ${Torch_VERSION}")
  endif()
  message(STATUS "LibTorch ${Torch_VERSION} from ${Torch_DIR}")

  # A LibTorch built with CUDA gets lesion's own CUDA kernels too (model/cuda/; the runtime
  # falls back to ATen ops without them, see model/next_token_ops.h). Needs nvcc.
  if(C10_CUDA_LIBRARY)
    include(CheckLanguage)
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
        set(CMAKE_CUDA_ARCHITECTURES 80 90)
      endif()
      set(CMAKE_CUDA_STANDARD 17)
      enable_language(CUDA)
      set(LESION_CUDA_KERNELS ON)
    else()
      message(WARNING "LibTorch has CUDA but no CUDA compiler was found: lesion's fused CUDA kernels are "
                      "left out (perplexity on GPUs is slower). Set CMAKE_CUDA_COMPILER to nvcc.")
    endif()
  endif()
endif()
message(STATUS "lesion CUDA kernels: ${LESION_CUDA_KERNELS}")

if(LESION_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()

# The torch wheel ships protobuf headers of its own in its include directory. Targets that include
# generated .pb.h files must see the system protobuf headers first (recipes/gpu.md, step 3).
set(LESION_PROTOBUF_INCLUDE_DIRS ${Protobuf_INCLUDE_DIRS})
