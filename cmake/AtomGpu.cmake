# Resolves ATOM_GPU (auto, cuda, hip, off) into ATOM_GPU_BACKEND and defines
# atom_add_gpu_library(), which builds HIP sources from kernels/ for the chosen backend:
#   cuda: nvcc compiles them through the HIP-to-CUDA mapping in include/atom/gpu;
#   hip:  hipcc compiles them for ATOM_HIP_ARCHS.
# With ATOM_HIP_COMPILE_CHECK, the same sources are also compiled for AMD when the backend is not
# hip, so that one build proves the device code compiles for both vendors.

find_program(ATOM_NVCC nvcc HINTS ENV CUDA_HOME /usr/local/cuda PATH_SUFFIXES bin)
find_program(ATOM_HIPCC hipcc)
set(ATOM_CUDA_ARCHS "90a" CACHE STRING "CUDA architectures for the cuda backend")
set(ATOM_HIP_ARCHS "gfx90a;gfx940" CACHE STRING "AMD architectures for hipcc")

if(ATOM_GPU STREQUAL "auto")
  if(ATOM_NVCC)
    set(ATOM_GPU_BACKEND cuda)
  elseif(ATOM_HIPCC)
    set(ATOM_GPU_BACKEND hip)
  else()
    set(ATOM_GPU_BACKEND off)
  endif()
elseif(ATOM_GPU MATCHES "^(cuda|hip|off)$")
  set(ATOM_GPU_BACKEND ${ATOM_GPU})
else()
  message(FATAL_ERROR "ATOM_GPU='${ATOM_GPU}' is not one of auto, cuda, hip, off")
endif()
if(ATOM_GPU_BACKEND STREQUAL "cuda" AND NOT ATOM_NVCC)
  message(FATAL_ERROR "ATOM_GPU=cuda but nvcc was not found (set CUDA_HOME or PATH)")
endif()
if(ATOM_GPU_BACKEND STREQUAL "hip" AND NOT ATOM_HIPCC)
  message(FATAL_ERROR "ATOM_GPU=hip but hipcc was not found (apt-get install hipcc libamdhip64-dev)")
endif()

if(ATOM_HIPCC AND NOT ATOM_GPU_BACKEND STREQUAL "hip")
  set(_hip_check_default ON)
else()
  set(_hip_check_default OFF)
endif()
option(ATOM_HIP_COMPILE_CHECK "Also compile the device code for AMD with hipcc" ${_hip_check_default})

if(ATOM_GPU_BACKEND STREQUAL "cuda")
  set(CMAKE_CUDA_COMPILER ${ATOM_NVCC})
  set(CMAKE_CUDA_ARCHITECTURES ${ATOM_CUDA_ARCHS})
  enable_language(CUDA)
  # CMake 3.25 predates nvcc's C++20 support: teach it the flag, so that the CUDA20 dialect
  # (also what atom's cxx_std_20 requirement turns into for CUDA targets) maps to -std=c++20.
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  find_package(CUDAToolkit REQUIRED)
elseif(ATOM_GPU_BACKEND STREQUAL "hip")
  find_library(ATOM_AMDHIP64 amdhip64 REQUIRED)
endif()
message(STATUS "atom: GPU backend '${ATOM_GPU_BACKEND}' (ATOM_GPU=${ATOM_GPU}); "
               "AMD compile check ${ATOM_HIP_COMPILE_CHECK}")

# Compiles each source with hipcc for ATOM_HIP_ARCHS; returns the object paths in out_var.
function(_atom_hipcc_objects out_var dir)
  set(objects)
  foreach(src IN LISTS ARGN)
    get_filename_component(abs ${src} ABSOLUTE)
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${abs})
    set(obj ${CMAKE_CURRENT_BINARY_DIR}/${dir}/${rel}.o)
    get_filename_component(obj_dir ${obj} DIRECTORY)
    set(arch_flags)
    foreach(a IN LISTS ATOM_HIP_ARCHS)
      list(APPEND arch_flags --offload-arch=${a})
    endforeach()
    add_custom_command(OUTPUT ${obj}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${obj_dir}
      COMMAND ${ATOM_HIPCC} -std=c++20 -O3 -fPIC -Wall -Werror -DATOM_GPU_HIP=1
              -I${PROJECT_SOURCE_DIR}/include -I${PROJECT_SOURCE_DIR} ${arch_flags}
              -c ${abs} -o ${obj}
      DEPENDS ${abs}
      IMPLICIT_DEPENDS CXX ${abs}
      COMMENT "hipcc ${ATOM_HIP_ARCHS}: ${rel}"
      VERBATIM)
    list(APPEND objects ${obj})
  endforeach()
  set(${out_var} ${objects} PARENT_SCOPE)
endfunction()

# atom_add_gpu_library(<name> <sources...>): a static library of device code for the backend.
function(atom_add_gpu_library name)
  if(ATOM_GPU_BACKEND STREQUAL "cuda")
    add_library(${name} STATIC ${ARGN})
    set_source_files_properties(${ARGN} PROPERTIES LANGUAGE CUDA)
    target_compile_definitions(${name} PUBLIC ATOM_GPU_CUDA=1)
    target_compile_options(${name} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -Xcompiler=-Wall -Werror=all-warnings>)
    target_link_libraries(${name} PUBLIC CUDA::cudart)
    set_target_properties(${name} PROPERTIES CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON
                                             CUDA_EXTENSIONS OFF)
  elseif(ATOM_GPU_BACKEND STREQUAL "hip")
    _atom_hipcc_objects(objects ${name}.hip ${ARGN})
    add_library(${name} STATIC ${objects})
    set_target_properties(${name} PROPERTIES LINKER_LANGUAGE CXX)
    target_compile_definitions(${name} PUBLIC ATOM_GPU_HIP=1)
    target_link_libraries(${name} PUBLIC ${ATOM_AMDHIP64})
  endif()
  if(ATOM_HIP_COMPILE_CHECK)
    _atom_hipcc_objects(check_objects ${name}.amd-check ${ARGN})
    add_custom_target(${name}_amd_check ALL DEPENDS ${check_objects})
  endif()
endfunction()
