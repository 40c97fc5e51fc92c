# ATOM_SANITIZE: every C and C++ target built with AddressSanitizer and UndefinedBehaviorSanitizer
# (any report aborts the run, so a ctest entry fails on it). Device code is not sanitized here
# (compute-sanitizer checks it on a GPU machine), so a sanitized build is a host-backend build.
if(ATOM_SANITIZE)
  if(NOT ATOM_GPU STREQUAL "off")
    message(STATUS "atom: ATOM_SANITIZE builds the host backend only (ATOM_GPU=off)")
    set(ATOM_GPU "off" CACHE STRING "GPU toolchain: auto, cuda, hip or off" FORCE)
  endif()
  set(ATOM_HIP_COMPILE_CHECK OFF CACHE BOOL "Also compile the device code for AMD with hipcc" FORCE)
  set(atom_sanitize_flags -fsanitize=address,undefined -fno-sanitize-recover=all
                          -fno-omit-frame-pointer)
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${atom_sanitize_flags}>")
  add_link_options(${atom_sanitize_flags})
  # GCC's -Wmaybe-uninitialized reports false positives inside the instrumented standard library
  # (std::variant of strings); the unsanitized build keeps the warning.
  add_compile_options("$<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wno-maybe-uninitialized>")
  # GCC 12's null checks make a comparison of a lambda's function pointer with nullptr
  # non-constant, which the axis descriptors' static_assert needs (the null-pointer accesses they
  # would report are segmentation faults that AddressSanitizer reports).
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    set(atom_no_null -fno-sanitize=null,nonnull-attribute,returns-nonnull-attribute)
    add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${atom_no_null}>")
    add_link_options(${atom_no_null})
  endif()
endif()
