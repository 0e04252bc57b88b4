# Add-on to lammps-facet.cmake: the KOKKOS package, so one build runs both
# `pair_style mliap` (plain) and `mliap/kk` (`lmp -k on t N -sf kk`, or
# `-k on g 1 -sf kk` on GPUs). Load it after the base file:
#
#   cmake -C deploy/lammps-facet.cmake -C deploy/lammps-facet-kokkos.cmake ...
#
# Host backends only (OpenMP + Serial, generic x86-64, no Kokkos_ARCH_*). For GPUs
# add e.g. -D Kokkos_ENABLE_CUDA=on -D Kokkos_ARCH_HOPPER90=on (or AMPERE80, ...)
# and -D CMAKE_CXX_COMPILER=<lammps>/lib/kokkos/bin/nvcc_wrapper; see deploy/README.md.

set(PKG_KOKKOS ON CACHE BOOL "")
set(Kokkos_ENABLE_SERIAL ON CACHE BOOL "")
set(Kokkos_ENABLE_OPENMP ON CACHE BOOL "")
set(BUILD_OMP ON CACHE BOOL "")           # required by Kokkos_ENABLE_OPENMP
set(Kokkos_ENABLE_DEPRECATION_WARNINGS OFF CACHE BOOL "")
