# `cmake --install build [--prefix P]`: the library, its public headers, the dsv4
# tool, the CMake package (find_package(dsv4) -> dsv4::dsv4) and dsv4.pc for
# pkg-config (with MPI: dsv4-mpi.pc too), all relocatable. The Python package is the separate, opt-in
# component `python` (python/CMakeLists.txt) or `pip install .` (setup.py).
include(CMakePackageConfigHelpers)
set(DSV4_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/dsv4)

install(TARGETS dsv4 EXPORT dsv4Targets)
if(DSV4_MPI)  # the component `mpi`: dsv4::mpi (context parallelism)
  install(TARGETS dsv4_mpi EXPORT dsv4Targets)
endif()
install(DIRECTORY include/dsv4 ${PROJECT_BINARY_DIR}/include/dsv4 DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(DSV4_BUILD_TOOLS)
  install(TARGETS dsv4_cli)
endif()
install(FILES LICENSE DESTINATION ${CMAKE_INSTALL_DOCDIR})

install(EXPORT dsv4Targets NAMESPACE dsv4:: DESTINATION ${DSV4_CMAKE_DIR})
configure_package_config_file(cmake/dsv4Config.cmake.in ${PROJECT_BINARY_DIR}/dsv4Config.cmake
                              INSTALL_DESTINATION ${DSV4_CMAKE_DIR})
# 0.x: a new minor version may change the API.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dsv4ConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dsv4Config.cmake ${PROJECT_BINARY_DIR}/dsv4ConfigVersion.cmake
              cmake/FindOpenBLAS.cmake DESTINATION ${DSV4_CMAKE_DIR})

# pkg-config: the static library's dependencies go in Libs; the run path keeps
# the OpenMP build of OpenBLAS even where another one is the system default.
get_filename_component(_dsv4_blas_dir "${OpenBLAS_LIBRARY}" DIRECTORY)
set(DSV4_PC_BLAS "-L${_dsv4_blas_dir} -Wl,-rpath,${_dsv4_blas_dir} -lopenblas")
string(REPLACE ";" " " DSV4_PC_OPENMP "${OpenMP_CXX_FLAGS}")
file(RELATIVE_PATH DSV4_PC_UP /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" DSV4_PC_UP "${DSV4_PC_UP}")
configure_file(cmake/dsv4.pc.in ${PROJECT_BINARY_DIR}/dsv4.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/dsv4.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(DSV4_MPI)  # dsv4-mpi.pc: dsv4_mpi with the flags of the MPI CMake found
  list(TRANSFORM MPI_CXX_INCLUDE_DIRS PREPEND -I OUTPUT_VARIABLE _dsv4_mpi_inc)
  list(TRANSFORM MPI_CXX_COMPILE_DEFINITIONS PREPEND -D OUTPUT_VARIABLE _dsv4_mpi_def)
  list(JOIN _dsv4_mpi_inc " " _dsv4_mpi_inc)
  list(JOIN _dsv4_mpi_def " " _dsv4_mpi_def)
  string(REPLACE ";" " " DSV4_PC_MPI_CFLAGS "${MPI_CXX_COMPILE_OPTIONS} ${_dsv4_mpi_def} ${_dsv4_mpi_inc}")
  string(REPLACE ";" " " DSV4_PC_MPI_LIBS "${MPI_CXX_LINK_FLAGS} ${MPI_CXX_LIBRARIES}")
  string(STRIP "${DSV4_PC_MPI_CFLAGS}" DSV4_PC_MPI_CFLAGS)
  string(STRIP "${DSV4_PC_MPI_LIBS}" DSV4_PC_MPI_LIBS)
  configure_file(cmake/dsv4-mpi.pc.in ${PROJECT_BINARY_DIR}/dsv4-mpi.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/dsv4-mpi.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()
