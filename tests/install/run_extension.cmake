# Installs the build into a scratch prefix, builds examples/extension against it (the extension's
# generator, its instances, its program) and runs the program with the extension's variable set.
file(REMOVE_RECURSE ${PREFIX} ${EXTENSION_BINARY})
include(${CMAKE_CURRENT_LIST_DIR}/run.cmake)
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX})
run(${CMAKE_COMMAND} -S ${EXTENSION_SOURCE} -B ${EXTENSION_BINARY} -DCMAKE_PREFIX_PATH=${PREFIX})
run(${CMAKE_COMMAND} --build ${EXTENSION_BINARY} --parallel 2)
run(${CMAKE_COMMAND} -E env MYENGINE_CHECK_MLP=1 MYENGINE_FUSED_ADD_NORM=0
    ${EXTENSION_BINARY}/myengine)
