# Helpers that give every lesion target the same warnings and include rules.

# Warnings for our own code only; third-party headers come in as SYSTEM through imported targets.
# CI builds with LESION_WERROR=ON, so a new warning fails the build there.
option(LESION_WERROR "Treat warnings of lesion's own code as errors" OFF)
function(lesion_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wshadow -Wno-unused-parameter $<$<BOOL:${LESION_WERROR}>:-Werror>>)
endfunction()

# Include roots. No target sees the repository top: a library exposes exactly its public headers
# (HEADERS), under their repository paths, through a directory of links in the build tree
# (build/include/NAME/<folder>/<header>). A target that does not link NAME cannot include them, so the
# compiler enforces the layering (docs/design.md, "Layers"), not only the linker. The sources and
# tests of a folder see every header of that folder (its internal ones too) through
# build/include/folders/<folder>.
function(lesion_folder_root out_var)
  file(RELATIVE_PATH folder ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  string(REPLACE "/" "__" key "${folder}")
  set(root ${PROJECT_BINARY_DIR}/include/folders/${key})
  if(NOT EXISTS ${root}/${folder})
    get_filename_component(parent ${root}/${folder} DIRECTORY)
    file(MAKE_DIRECTORY ${parent})
    file(CREATE_LINK ${CMAKE_CURRENT_SOURCE_DIR} ${root}/${folder} SYMBOLIC)
  endif()
  set(${out_var} ${root} PARENT_SCOPE)
endfunction()

# lesion_library(NAME HEADERS h... [SOURCES s...]): a static library of the current folder (an
# INTERFACE library when it has no SOURCES), whose public headers are HEADERS (paths in the folder),
# included as "<folder>/<header>".
function(lesion_library name)
  cmake_parse_arguments(ARG "" "" "HEADERS;SOURCES" ${ARGN})
  file(RELATIVE_PATH folder ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  set(root ${PROJECT_BINARY_DIR}/include/${name})
  file(REMOVE_RECURSE ${root})
  foreach(header ${ARG_HEADERS})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${header})
      message(FATAL_ERROR "${name}: public header ${folder}/${header} does not exist")
    endif()
    get_filename_component(dir ${root}/${folder}/${header} DIRECTORY)
    file(MAKE_DIRECTORY ${dir})
    file(CREATE_LINK ${CMAKE_CURRENT_SOURCE_DIR}/${header} ${root}/${folder}/${header} SYMBOLIC)
  endforeach()
  if(ARG_SOURCES)
    add_library(${name} STATIC ${ARG_SOURCES})
    lesion_folder_root(folder_root)
    target_include_directories(${name} PUBLIC ${root} PRIVATE ${folder_root})
    lesion_set_warnings(${name})
  else()
    add_library(${name} INTERFACE)
    target_include_directories(${name} INTERFACE ${root})
  endif()
endfunction()

# lesion_executable(NAME SOURCES ... LIBS ...): a program of the current folder.
function(lesion_executable name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  lesion_folder_root(folder_root)
  target_include_directories(${name} PRIVATE ${folder_root})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS})
  lesion_set_warnings(${name})
endfunction()

# lesion_test(NAME SOURCES ... LIBS ...): one GoogleTest binary registered with ctest, with the
# helpers of common/testing/ (ASSERT_OK, StatusIs, ScopedTestDir). Tests find fixtures through
# LESION_SOURCE_DIR.
function(lesion_test name)
  if(NOT LESION_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  lesion_folder_root(folder_root)
  target_include_directories(${name} PRIVATE ${folder_root})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} lesion_common_testing GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE LESION_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  lesion_set_warnings(${name})
  # The ThreadSanitizer build (cmake/LesionTsan.cmake) builds and runs only LESION_TSAN_TESTS; the
  # others stay defined (it reads their sources) but are neither built by default nor registered.
  if(LESION_TSAN AND NOT name IN_LIST LESION_TSAN_TESTS)
    set_target_properties(${name} PROPERTIES EXCLUDE_FROM_ALL ON)
    return()
  endif()
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600)
endfunction()
