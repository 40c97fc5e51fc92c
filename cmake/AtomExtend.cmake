# atom_add_instances(<target> EXTENSION <C++ type> HEADER <file> [SHARDS <n>])
#
# Generates the instances of an extension (atom/extend/extension.hpp) defined in HEADER by the
# struct EXTENSION, and builds them into the object library <target>: a program that links it
# resolves the extension's instances next to atom's own (atom::instances), from the extension's
# variables as well as atom's. The generator is compiled from atom's installed generator and the
# header, and reruns when the header changes; SHARDS (default 4) translation units compile in
# parallel.
function(atom_add_instances target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "EXTENSION;HEADER;SHARDS" "")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "atom_add_instances(${target}): unknown arguments ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT arg_EXTENSION OR NOT arg_HEADER)
    message(FATAL_ERROR "atom_add_instances(${target}): EXTENSION <C++ type> and HEADER <file> are required")
  endif()
  if(NOT arg_SHARDS)
    set(arg_SHARDS 4)
  endif()
  if(NOT arg_SHARDS MATCHES "^[1-9][0-9]*$")
    message(FATAL_ERROR "atom_add_instances(${target}): SHARDS must be a positive integer, not '${arg_SHARDS}'")
  endif()
  get_filename_component(header ${arg_HEADER} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  if(NOT EXISTS ${header})
    message(FATAL_ERROR "atom_add_instances(${target}): HEADER ${header} does not exist")
  endif()
  get_filename_component(header_dir ${header} DIRECTORY)
  get_filename_component(header_name ${header} NAME)

  set(dir ${CMAKE_CURRENT_BINARY_DIR}/${target}-instances)
  file(CONFIGURE OUTPUT ${dir}/codegen.cpp CONTENT
"// The generator of ${target}'s instances (atom_add_instances()).
#include \"${header_name}\"
#include \"atom/extend/generate.hpp\"

int main(int argc, char** argv) { return atom::extend::generate<${arg_EXTENSION}>(argc, argv); }
")
  add_executable(${target}-codegen ${dir}/codegen.cpp)
  target_include_directories(${target}-codegen PRIVATE ${header_dir})
  target_link_libraries(${target}-codegen PRIVATE atom::atom)

  set(outputs ${dir}/table.cpp)
  math(EXPR last "${arg_SHARDS} - 1")
  foreach(k RANGE ${last})
    list(APPEND outputs ${dir}/instances_${k}.cpp)
  endforeach()
  add_custom_command(OUTPUT ${outputs}
    COMMAND ${target}-codegen ${dir} ${header_name} ${arg_SHARDS} ${arg_EXTENSION}
    DEPENDS ${target}-codegen ${header}
    COMMENT "Generating the instances of ${arg_EXTENSION}"
    VERBATIM)
  add_library(${target} OBJECT ${outputs})
  target_include_directories(${target} PUBLIC ${header_dir})
  target_link_libraries(${target} PUBLIC atom::atom atom::instances)
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()
