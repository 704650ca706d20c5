# Helpers that give every lesion target the same warnings and include rules.

# Warnings for our own code only; third-party headers come in as SYSTEM through imported targets.
function(lesion_set_warnings target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
endfunction()

# lesion_library(NAME SOURCES ...): a static library rooted at the repository top, so includes read
# "experiments/transformer.h".
function(lesion_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  lesion_set_warnings(${name})
endfunction()

# lesion_test(NAME SOURCES ... LIBS ...): one GoogleTest binary registered with ctest. Tests find
# fixtures through LESION_SOURCE_DIR.
function(lesion_test name)
  if(NOT LESION_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE LESION_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  lesion_set_warnings(${name})
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600)
endfunction()
