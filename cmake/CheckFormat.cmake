# cmake -DCLANG_FORMAT=<exe> -DROOT=<repo> -P CheckFormat.cmake
# Fails listing every C++ file of ours that clang-format (the repo's .clang-format) would change.
file(GLOB_RECURSE files
  ${ROOT}/include/*.hpp ${ROOT}/include/*.h ${ROOT}/src/*.cpp ${ROOT}/src/*.hpp
  ${ROOT}/tools/*.cpp ${ROOT}/tools/*.hpp ${ROOT}/tests/*.cpp ${ROOT}/tests/*.hpp
  ${ROOT}/kernels/*.hip ${ROOT}/kernels/*.hpp ${ROOT}/tests/*.c ${ROOT}/tests/*.h
  ${ROOT}/examples/*.c ${ROOT}/include/*.h
  # Generated, and held to the same layout: atom-codegen writes what clang-format would.
  ${ROOT}/instantiations/*.cpp ${ROOT}/instantiations/*.hpp)
set(bad)
foreach(f IN LISTS files)
  execute_process(COMMAND ${CLANG_FORMAT} --dry-run --Werror ${f}
    RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(NOT rc EQUAL 0)
    list(APPEND bad ${f})
  endif()
endforeach()
if(bad)
  list(JOIN bad "\n  " text)
  message(FATAL_ERROR "not clang-formatted (run clang-format -i):\n  ${text}")
endif()
