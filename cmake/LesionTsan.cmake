# ThreadSanitizer build (LESION_TSAN=ON; scripts/tsan.sh, make tsan): the unit tests of the threaded,
# gRPC-free code (storage's read pool and store, the server's store writer, tracker, baseline cache,
# fair queue and sweep shards) built with clang's -fsanitize=thread and run by ctest.
#
# TSan only sees the happens-before of code it instruments or intercepts. pthread mutexes and
# std::mutex are intercepted, so the uninstrumented Debian SQLite, protobuf and GoogleTest are fine,
# but absl::Mutex is Abseil's own futex code: with Debian's shared, uninstrumented Abseil every
# absl::Mutex-guarded field is reported as a race. So this build needs an Abseil built with
# -fsanitize=thread (scripts/tsan.sh builds Debian's exact upstream version into build-tsan/absl
# and passes it in CMAKE_PREFIX_PATH), and nothing in a test binary may load Debian's Abseil: gRPC
# (Debian, uninstrumented, linked to libabsl*.so) and prometheus-cpp stay out. Two Abseils in one
# process would be wrong anyway.
#
# What this file does:
#   - the TSan flags for every target defined after it (included before the folders);
#   - LESION_TSAN_TESTS: the only lesion_test() targets built by default and registered with ctest in
#     this build (LesionTargets.cmake); the others stay defined, unbuilt;
#   - lesion_tsan_targets(), called after the folders: the gRPC-free half of lesion_server and of
#     server_test as targets of their own (see below), and the target tsan_tests that builds them all.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "LESION_TSAN needs clang, not ${CMAKE_CXX_COMPILER_ID} (scripts/tsan.sh)")
endif()
if(LESION_WITH_TORCH)
  message(FATAL_ERROR "LESION_TSAN needs -DLESION_WITH_TORCH=OFF: LibTorch is not built with ThreadSanitizer")
endif()
if(LESION_FUZZ)
  message(FATAL_ERROR "LESION_TSAN and LESION_FUZZ exclude each other (ThreadSanitizer vs AddressSanitizer)")
endif()
# The Abseil found must be the instrumented one (scripts/tsan.sh); Debian's would make every
# absl::Mutex a false race.
if(absl_DIR MATCHES "^/usr/")
  message(FATAL_ERROR "LESION_TSAN found Debian's Abseil (${absl_DIR}), which is not instrumented: pass the "
                      "prefix of a -fsanitize=thread Abseil in CMAKE_PREFIX_PATH (scripts/tsan.sh builds one)")
endif()

set(LESION_TSAN_FLAGS -fsanitize=thread -fno-omit-frame-pointer)
add_compile_options(${LESION_TSAN_FLAGS} -O1 -gline-tables-only)
add_link_options(${LESION_TSAN_FLAGS})

# The existing test targets that link neither gRPC nor LibTorch and run threads.
set(LESION_TSAN_TESTS storage_test)

# server/ mixes the gRPC service with the tracker in one library (lesion_server) and one test
# binary (server_test), and tracker.h includes the messages of service.proto, which live in
# lesion_v1_grpc together with the gRPC stubs. So this build compiles the gRPC-free sources of
# those targets again, in targets of its own:
#   lesion_tsan_service_proto  service.proto's messages without the stubs (protoc --cpp_out only)
#   lesion_tsan_server         lesion_server without LESION_TSAN_GRPC_SOURCES
#   lesion_tsan_server_testing lesion_server_testing on top of it
#   tsan_server_test           server_test without LESION_TSAN_GRPC_TESTS
# The source lists are read from the server's targets, so files added there are picked up; a new
# source that needs gRPC fails this build's link and belongs in the lists below.
set(LESION_TSAN_GRPC_SOURCES service.cc metrics.cc)
set(LESION_TSAN_GRPC_TESTS service_test.cc)

function(lesion_tsan_sources out target excluded)
  get_target_property(sources ${target} SOURCES)
  get_target_property(dir ${target} SOURCE_DIR)
  set(kept)
  foreach(source ${sources})
    get_filename_component(name ${source} NAME)
    if(NOT name IN_LIST excluded)
      if(NOT IS_ABSOLUTE ${source})
        set(source ${dir}/${source})
      endif()
      list(APPEND kept ${source})
    endif()
  endforeach()
  set(${out} ${kept} PARENT_SCOPE)
endfunction()

function(lesion_tsan_targets)
  # service.proto's messages, generated apart from lesion_v1_grpc's outputs (build/gen) so that the
  # two custom commands never share an output.
  set(gen ${PROJECT_BINARY_DIR}/tsan-gen)
  set(out ${gen}/proto/lesion/v1)
  add_custom_command(
    OUTPUT ${out}/service.pb.cc ${out}/service.pb.h
    COMMAND ${CMAKE_COMMAND} -E make_directory ${gen}/proto
    COMMAND protobuf::protoc --cpp_out=${gen}/proto -I ${PROJECT_SOURCE_DIR}/proto lesion/v1/service.proto
    DEPENDS ${PROJECT_SOURCE_DIR}/proto/lesion/v1/service.proto protobuf::protoc
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}/proto
    COMMENT "protoc proto/lesion/v1/service.proto (messages only, TSan build)")
  add_library(lesion_tsan_service_proto STATIC ${out}/service.pb.cc ${out}/service.pb.h)
  target_include_directories(lesion_tsan_service_proto BEFORE PUBLIC ${gen} ${gen}/proto)
  target_link_libraries(lesion_tsan_service_proto PUBLIC lesion_v1_proto)

  # The server's folder root and public roots (made by lesion_library / lesion_folder_root).
  set(folder_root ${PROJECT_BINARY_DIR}/include/folders/server)
  set(server_root ${PROJECT_BINARY_DIR}/include/lesion_server)
  set(testing_root ${PROJECT_BINARY_DIR}/include/lesion_server_testing)

  lesion_tsan_sources(server_sources lesion_server "${LESION_TSAN_GRPC_SOURCES}")
  add_library(lesion_tsan_server STATIC ${server_sources})
  target_include_directories(lesion_tsan_server PUBLIC ${server_root} PRIVATE ${folder_root})
  get_target_property(definitions lesion_server COMPILE_DEFINITIONS)
  target_compile_definitions(lesion_tsan_server PRIVATE ${definitions})
  target_link_libraries(lesion_tsan_server
    PUBLIC lesion_tsan_service_proto lesion_storage lesion_spec lesion_common absl::status absl::statusor
           absl::strings absl::time absl::synchronization
           # tracker.h's flat_hash_map: lesion_server gets it only through gRPC's Abseil libraries
           absl::flat_hash_map
    PRIVATE nlohmann_json::nlohmann_json absl::random_random absl::str_format OpenSSL::Crypto)
  lesion_set_warnings(lesion_tsan_server)

  lesion_tsan_sources(testing_sources lesion_server_testing "")
  add_library(lesion_tsan_server_testing STATIC ${testing_sources})
  target_include_directories(lesion_tsan_server_testing PUBLIC ${testing_root} PRIVATE ${folder_root})
  target_link_libraries(lesion_tsan_server_testing
    PUBLIC lesion_tsan_server lesion_common_testing lesion_spec absl::status absl::statusor absl::synchronization)
  lesion_set_warnings(lesion_tsan_server_testing)

  lesion_tsan_sources(test_sources server_test "${LESION_TSAN_GRPC_TESTS}")
  add_executable(tsan_server_test ${test_sources})
  target_include_directories(tsan_server_test PRIVATE ${folder_root})
  target_link_libraries(tsan_server_test PRIVATE lesion_tsan_server lesion_tsan_server_testing
    lesion_engine_scheduling lesion_common_testing GTest::gmock GTest::gtest GTest::gtest_main)
  target_compile_definitions(tsan_server_test PRIVATE LESION_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  lesion_set_warnings(tsan_server_test)
  gtest_discover_tests(tsan_server_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600)

  add_custom_target(tsan_tests DEPENDS ${LESION_TSAN_TESTS} tsan_server_test)
endfunction()
