# FindOpenBLAS: OpenBLAS built with OpenMP, the build dsv4 needs. dsv4 calls BLAS
# only from inside its own OpenMP parallel regions, where the OpenMP build runs
# single-threaded (the pthreads build changes its blocking with the thread count,
# the serial build is not safe to call from several threads).
#
# Looks first where Debian's libopenblas-openmp-dev puts it
# (/usr/{include,lib}/<arch>/openblas-openmp), then under OpenBLAS_ROOT and the
# default paths (libopenblaso: Fedora's OpenMP build). To choose another, set
# OpenBLAS_INCLUDE_DIR (the folder with cblas.h) and OpenBLAS_LIBRARY.
#
# Defines OpenBLAS_FOUND, OpenBLAS_VERSION, OpenBLAS_INCLUDE_DIR, OpenBLAS_LIBRARY
# and the imported target OpenBLAS::OpenBLAS. Installed with dsv4's CMake package,
# which finds its dependencies with it.
set(_openblas_arch_dirs)
if(CMAKE_LIBRARY_ARCHITECTURE)
  set(_openblas_arch_dirs /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp
                          /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
endif()
find_path(OpenBLAS_INCLUDE_DIR cblas.h PATHS ${_openblas_arch_dirs} NO_DEFAULT_PATH)
find_path(OpenBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas-openmp openblas)
find_library(OpenBLAS_LIBRARY NAMES openblas PATHS ${_openblas_arch_dirs} NO_DEFAULT_PATH)
find_library(OpenBLAS_LIBRARY NAMES openblaso openblas PATH_SUFFIXES openblas-openmp)

if(OpenBLAS_INCLUDE_DIR AND EXISTS "${OpenBLAS_INCLUDE_DIR}/openblas_config.h")
  file(STRINGS "${OpenBLAS_INCLUDE_DIR}/openblas_config.h" _openblas_version_line REGEX "define OPENBLAS_VERSION ")
  string(REGEX MATCH "[0-9]+\\.[0-9]+\\.[0-9]+" OpenBLAS_VERSION "${_openblas_version_line}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OpenBLAS
  REQUIRED_VARS OpenBLAS_LIBRARY OpenBLAS_INCLUDE_DIR
  VERSION_VAR OpenBLAS_VERSION
  REASON_FAILURE_MESSAGE "dsv4 needs OpenBLAS built with OpenMP (Debian: apt-get install libopenblas-openmp-dev)")
mark_as_advanced(OpenBLAS_INCLUDE_DIR OpenBLAS_LIBRARY)

if(OpenBLAS_FOUND AND NOT TARGET OpenBLAS::OpenBLAS)
  add_library(OpenBLAS::OpenBLAS UNKNOWN IMPORTED)
  set_target_properties(OpenBLAS::OpenBLAS PROPERTIES IMPORTED_LOCATION "${OpenBLAS_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${OpenBLAS_INCLUDE_DIR}")
endif()
unset(_openblas_arch_dirs)
unset(_openblas_version_line)
