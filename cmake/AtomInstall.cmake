include(CMakePackageConfigHelpers)

install(DIRECTORY include/atom DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS atom EXPORT atomTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
configure_package_config_file(cmake/atomConfig.cmake.in
  ${PROJECT_BINARY_DIR}/atomConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/atom)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/atomConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/atomConfig.cmake ${PROJECT_BINARY_DIR}/atomConfigVersion.cmake
  ${PROJECT_SOURCE_DIR}/cmake/AtomExtend.cmake DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/atom)

# The table, exported as atom::instances (the name the build tree's alias has), with the
# instances.hpp of the build's profile.
set_target_properties(atom_instances PROPERTIES EXPORT_NAME instances)
install(TARGETS atom_instances EXPORT atomTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
get_target_property(atom_generated_dir atom_instances ATOM_GENERATED_DIR)
install(FILES ${atom_generated_dir}/instances.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/atom/instantiations)

# The kernels and the host-side GPU API, when a GPU backend is built.
if(TARGET atom_gpu)
  install(TARGETS atom_gpu EXPORT atomTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()

# The plugin is dlopened by host engines, not linked: installed outside the export.
if(TARGET atom_plugin)
  install(TARGETS atom_plugin LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()

install(EXPORT atomTargets NAMESPACE atom:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/atom)
