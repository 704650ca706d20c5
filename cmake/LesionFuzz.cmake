# Sanitizer flags of the fuzz and sanitizer build (LESION_FUZZ=ON), set for every target before any is defined:
# libFuzzer only learns from code compiled with its coverage instrumentation, and AddressSanitizer
# only sees the overflows of instrumented code, so the libraries under test get them as much as the
# fuzz executables do. The Debian absl, protobuf and gRPC stay uninstrumented (built with gcc); they
# link fine, as clang on Debian uses the same libstdc++.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "LESION_FUZZ needs clang (libFuzzer), not ${CMAKE_CXX_COMPILER_ID}: configure with "
                      "-DCMAKE_CXX_COMPILER=clang++ (Debian: apt-get install clang-14 libclang-rt-14-dev), "
                      "or run scripts/run_fuzzers.sh")
endif()
if(LESION_WITH_TORCH)
  message(FATAL_ERROR "LESION_FUZZ needs -DLESION_WITH_TORCH=OFF: LibTorch is not built with sanitizers")
endif()

# UBSan findings abort (-fno-sanitize-recover) so that libFuzzer records them as crashes.
set(LESION_SANITIZE_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
add_compile_options(-fsanitize=fuzzer-no-link ${LESION_SANITIZE_FLAGS})
# Every executable of the tree links the sanitizer runtimes; the fuzzers add libFuzzer's main.
add_link_options(${LESION_SANITIZE_FLAGS})
# -O1 with line tables only, as OSS-Fuzz builds: readable sanitizer stacks, and a build of about
# half the time of -O2 -g (this build runs in every CI run: scripts/sanitize.sh, then the fuzzers).
add_compile_options(-O1 -gline-tables-only)
