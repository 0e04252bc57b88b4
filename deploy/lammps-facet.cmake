# CMake initial cache for a LAMMPS that runs Facet models through ML-IAP unified
# (pair_style mliap unified ...). Use it with LAMMPS' own cmake/ folder:
#
#   cmake -C deploy/lammps-facet.cmake [-C deploy/lammps-facet-kokkos.cmake] \
#         -D Python_EXECUTABLE=/path/to/venv/bin/python \
#         -D CMAKE_INSTALL_PREFIX=/where/to/install -S <lammps>/cmake -B build
#
# deploy/build_lammps.sh does exactly this (plus source download, patches, cache).
# Python_EXECUTABLE (not Python3_EXECUTABLE) must be a shared-libpython interpreter
# with Cython and NumPy installed, or MLIAP_ENABLE_PYTHON silently turns itself off:
# check that the configure summary shows "Defines: ... MLIAP_PYTHON ...".

set(CMAKE_BUILD_TYPE Release CACHE STRING "")
set(BUILD_SHARED_LIBS ON CACHE BOOL "")   # liblammps.so for the Python module
set(BUILD_MPI ON CACHE BOOL "")
set(BUILD_OMP ON CACHE BOOL "")
set(LAMMPS_MACHINE "" CACHE STRING "")    # executable is called plain `lmp`

set(PKG_ML-IAP ON CACHE BOOL "")
set(PKG_ML-SNAP ON CACHE BOOL "")          # ML-IAP's built-in SNAP descriptors
set(PKG_PYTHON ON CACHE BOOL "")
set(MLIAP_ENABLE_PYTHON ON CACHE BOOL "") # pair_style mliap unified / model mliappy
set(PKG_PLUGIN ON CACHE BOOL "")          # `plugin load` for the C++ pair style
set(PKG_MANYBODY ON CACHE BOOL "")        # reference potentials (eam, tersoff, sw, ...)

# The installed lmp/liblammps find each other (and MPI, libpython) without
# LD_LIBRARY_PATH. $ORIGIN keeps a relocated install working; build_lammps.sh
# overrides it with the absolute install path.
set(CMAKE_INSTALL_RPATH "\$ORIGIN/../lib" CACHE STRING "")
set(CMAKE_INSTALL_RPATH_USE_LINK_PATH ON CACHE BOOL "")
