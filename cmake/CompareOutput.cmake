# cmake -DTOOL=<program> -DARGS=<args> -DEXPECTED=<file> -P CompareOutput.cmake
# Fails when the program's output differs from the file (a generated file kept in the repo).
separate_arguments(args UNIX_COMMAND "${ARGS}")
execute_process(COMMAND ${TOOL} ${args} OUTPUT_VARIABLE out RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${TOOL} ${ARGS} exited with ${rc}")
endif()
file(READ ${EXPECTED} expected)
if(NOT out STREQUAL expected)
  message(FATAL_ERROR "${EXPECTED} is stale: regenerate it with `${TOOL} ${ARGS} > ${EXPECTED}`")
endif()
