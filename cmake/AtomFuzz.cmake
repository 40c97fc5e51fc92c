# libFuzzer targets, built by clang (the main build may use another compiler) straight from
# atom's sources with AddressSanitizer and UndefinedBehaviorSanitizer, and run for a bounded time
# as ctest entries (label fuzz). Off when no clang that links libFuzzer is found.
#
# atom_fuzzer(<name> SOURCES <fuzz source> <atom sources...> SEEDS <dirs...> [DICT <file>]
#             [DEFINES <-D...>] [DEPENDS <files...>] [SECONDS <n>] [MAX_LEN <bytes>])
option(ATOM_FUZZ "Build the libFuzzer targets and run each for a bounded time as a test" ON)
find_program(ATOM_FUZZ_CXX NAMES clang++-14 clang++-15 clang++)

set(atom_fuzz_usable OFF)
if(ATOM_FUZZ AND ATOM_FUZZ_CXX)
  set(probe ${CMAKE_BINARY_DIR}/atom_fuzz_probe.cpp)
  file(WRITE ${probe}
    "#include <cstddef>\n#include <cstdint>\n"
    "extern \"C\" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }\n")
  execute_process(
    COMMAND ${ATOM_FUZZ_CXX} -std=c++20 -fsanitize=fuzzer,address ${probe}
            -o ${CMAKE_BINARY_DIR}/atom_fuzz_probe
    RESULT_VARIABLE probe_result OUTPUT_QUIET ERROR_QUIET)
  if(probe_result EQUAL 0)
    set(atom_fuzz_usable ON)
  else()
    message(STATUS "atom: ${ATOM_FUZZ_CXX} cannot link libFuzzer; the fuzzers are off")
  endif()
endif()

# Each source is compiled to its own object (so that a parallel build compiles them side by side),
# then linked with libFuzzer's main. Sources may be generated (GENERATED: files written by a custom
# command of this directory).
function(atom_fuzzer name)
  if(NOT atom_fuzz_usable)
    return()
  endif()
  cmake_parse_arguments(F "" "DICT;SECONDS;MAX_LEN" "SOURCES;SEEDS;DEFINES;DEPENDS" ${ARGN})
  if(NOT F_SECONDS)
    set(F_SECONDS 15)
  endif()
  if(NOT F_MAX_LEN)
    set(F_MAX_LEN 8192)
  endif()
  find_package(nlohmann_json 3.10 REQUIRED)
  get_target_property(json_include nlohmann_json::nlohmann_json INTERFACE_INCLUDE_DIRECTORIES)
  set(includes -I${PROJECT_SOURCE_DIR}/include)
  foreach(dir IN LISTS json_include)
    list(APPEND includes -I${dir})
  endforeach()
  file(GLOB_RECURSE headers CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/include/atom/*.hpp
       ${PROJECT_SOURCE_DIR}/src/*.hpp)
  set(flags -std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined)
  set(objects)
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/${name}_objects)
  foreach(source IN LISTS F_SOURCES)
    # One object per source, named after its path (sources of different folders share names).
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${source})
    if(rel MATCHES "^\\.\\.")
      file(RELATIVE_PATH rel ${PROJECT_BINARY_DIR} ${source})
    endif()
    string(MAKE_C_IDENTIFIER "${rel}" stem)
    set(object ${CMAKE_CURRENT_BINARY_DIR}/${name}_objects/${stem}.o)
    add_custom_command(OUTPUT ${object}
      COMMAND ${ATOM_FUZZ_CXX} ${flags} -fsanitize=fuzzer-no-link ${F_DEFINES} ${includes}
              -c ${source} -o ${object}
      DEPENDS ${source} ${headers} ${F_DEPENDS}
      COMMENT "Compiling ${rel} for the fuzzer ${name}"
      VERBATIM)
    list(APPEND objects ${object})
  endforeach()
  set(bin ${CMAKE_CURRENT_BINARY_DIR}/${name})
  add_custom_command(OUTPUT ${bin}
    COMMAND ${ATOM_FUZZ_CXX} ${flags} -fsanitize=fuzzer ${objects} -o ${bin}
    DEPENDS ${objects}
    COMMENT "Linking the fuzzer ${name}"
    VERBATIM)
  add_custom_target(atom-fuzz-${name} ALL DEPENDS ${bin})
  # New inputs go to a scratch corpus; the committed seeds are only read.
  set(work ${CMAKE_CURRENT_BINARY_DIR}/${name}_corpus)
  set(dict "")
  if(F_DICT)
    set(dict "-dict=${F_DICT}")
  endif()
  list(JOIN F_SEEDS "' '" seeds)
  add_test(NAME "fuzz: ${name}"
    COMMAND sh -c "mkdir -p '${work}' && exec '${bin}' -max_total_time=${F_SECONDS} -timeout=5 \
-rss_limit_mb=2048 -max_len=${F_MAX_LEN} ${dict} '${work}' '${seeds}'")
  set_tests_properties("fuzz: ${name}" PROPERTIES LABELS fuzz TIMEOUT 180)
endfunction()
