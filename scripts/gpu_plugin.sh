#!/usr/bin/env bash
# The native plugin on a GPU machine that has PyTorch (CUDA), nvcc, a C++ compiler and CMake but
# no network: build a minimal LAMMPS (core + PLUGIN, no patches) and the plugin against that
# machine's libtorch, check it on the GPU against the CPU ASE calculator (float64 parity) and
# time MD steps at about 2k / 8k / 32k atoms.
#
#   scripts/gpu_plugin.sh prepare [--dir DIR]     # here, with the project's venv (no GPU):
#       DIR (default .gpu/, gitignored; carry it) gets lammps-core-plugin.tar.gz (LAMMPS
#       source trimmed to the core + PLUGIN, from the pristine Debian tarball, ~3 MB), the
#       plugin files of the models (float64 + float32), the parity structures as LAMMPS data
#       files and their ASE (float64, CPU) reference results (manifest.json).
#   scripts/gpu_plugin.sh run [--dir DIR] [--device cuda|cpu] [--sizes 2k,8k,32k|small]
#                             [--lammps-prefix DIR] [--plugin FILE] [--jobs N]
#                             [--models "Facet-S float32,..."] [--steps N]
#       builds LAMMPS from DIR/lammps-core-plugin.tar.gz into $WORK (default /tmp/facet-gpu)
#       unless --lammps-prefix names an installed one, builds the plugin against
#       `python3 -c 'import torch'` ($PYTHON) unless --plugin names a built one, then runs
#       scripts/gpu_plugin_check.py (needs only python3 + numpy) and writes
#       $OUT/plugin_gpu.json (OUT defaults to DIR).
#   scripts/gpu_plugin.sh configure-trimmed [--dir DIR]   # cmake-configure the trimmed tree
#       only (CPU test: the tarball still holds what LAMMPS' CMake needs)
#
# The CPU test (tests/test_gpu_plugin_script.py) runs `prepare`, `configure-trimmed` and
# `run --device cpu --sizes small` with the project's LAMMPS and plugin, so this does not rot.
# On the device machine:  bash scripts/gpu_plugin.sh run --dir .gpu   (carry: .gpu)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
log() { printf '[gpu_plugin] %s\n' "$*"; }
die() { printf '[gpu_plugin] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

cmd=${1:-}
[ -n "$cmd" ] || { usage; exit 2; }
shift
dir=$repo/.gpu
device=cuda
sizes=2k,8k,32k
lammps_prefix=""
plugin=""
jobs=$(nproc)
work=${WORK:-/tmp/facet-gpu}
py=${PYTHON:-python3}   # the Python with torch (CUDA) and numpy
check_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --lammps-prefix) lammps_prefix=$2; shift 2 ;;
    --plugin) plugin=$2; shift 2 ;;
    --jobs|-j) jobs=$2; shift 2 ;;
    --models) check_args+=(--models "$2"); shift 2 ;;
    --steps) check_args+=(--steps "$2" --warmup 1); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
tarball=$dir/lammps-core-plugin.tar.gz

# ------------------------------------------------------------------ trimmed LAMMPS source
make_tarball() {
  local cache=${FACET_LAMMPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/facet-lammps}
  local orig=${FACET_LAMMPS_ORIG:-$cache/src/lammps_20260704+dfsg.orig.tar.gz}
  [ -f "$orig" ] || die "no pristine LAMMPS tarball at $orig (deploy/build_lammps.sh downloads it; or set FACET_LAMMPS_ORIG)"
  local tmp
  tmp=$(mktemp -d)
  tar -xzf "$orig" -C "$tmp" cmake src LICENSE README
  # the core (src/*.cpp|h), the bundled fmt and JSON headers, PLUGIN, and the MPI stubs for a
  # build without MPI; every other package is dropped
  find "$tmp/src" -mindepth 1 -maxdepth 1 -type d ! -name fmt ! -name nlohmann ! -name PLUGIN \
    ! -name STUBS -exec rm -rf {} +
  mkdir -p "$tmp/potentials" "$tmp/bench" "$tmp/third_party" "$tmp/lib"
  printf 'LAMMPS 4 Jul 2026 (Debian %s), trimmed by scripts/gpu_plugin.sh: core + PLUGIN only.\n' \
    "$(basename "$orig")" >"$tmp/FACET-TRIMMED"
  tar -czf "$tarball.tmp" -C "$tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$tmp"
  log "wrote $tarball ($(du -h "$tarball" | cut -f1))"
}

unpack_trimmed() {
  [ -f "$tarball" ] || die "no $tarball: run '$0 prepare' on a machine with the project's venv"
  rm -rf "$work/lammps-src"
  mkdir -p "$work/lammps-src"
  tar -xzf "$tarball" -C "$work/lammps-src"
}

configure_lammps() {  # $1 = build dir, $2 = install prefix
  local mpi=()
  command -v mpicxx >/dev/null || mpi=(-D BUILD_MPI=off)   # serial MPI stubs without MPI
  cmake -S "$work/lammps-src/cmake" -B "$1" -D CMAKE_BUILD_TYPE=Release \
    -D BUILD_SHARED_LIBS=on -D PKG_PLUGIN=on -D BUILD_OMP=off -D LAMMPS_MACHINE= \
    -D CMAKE_INSTALL_PREFIX="$2" -D CMAKE_INSTALL_RPATH="$2/lib" \
    -D CMAKE_INSTALL_RPATH_USE_LINK_PATH=on -D DOWNLOAD_POTENTIALS=off "${mpi[@]}"
}

case $cmd in
  prepare)
    make_tarball
    log "models, structures and ASE references into $dir (a minute)"
    PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} "${PYTHON:-$repo/.venv/bin/python}" \
      "$here/gpu_plugin_prepare.py" --dir "$dir"
    ;;
  configure-trimmed)
    unpack_trimmed
    configure_lammps "$work/lammps-build" "$work/lammps-install" >"$work/configure.log" 2>&1 ||
      { tail -30 "$work/configure.log"; die "configuring the trimmed LAMMPS failed"; }
    grep -q 'LMP_PLUGIN' "$work/configure.log" || die "PLUGIN is not enabled in the configure output"
    log "the trimmed LAMMPS tree configures (core + PLUGIN): $work/lammps-build"
    ;;
  run)
    out=${OUT:-$dir}
    mkdir -p "$out" "$work"
    t0=$(date +%s)
    {
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
      "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())" || true
      for t in nvcc c++ cmake mpicxx mpirun; do printf '%s: %s\n' "$t" "$(command -v $t || echo missing)"; done
      nproc
    } 2>&1 | tee "$out/env.txt"
    if [ -z "$lammps_prefix" ]; then
      log "building LAMMPS core + PLUGIN from the trimmed tree ($jobs jobs)"
      unpack_trimmed
      configure_lammps "$work/lammps-build" "$work/lammps-install" >"$work/lammps-configure.log" 2>&1 ||
        { tail -30 "$work/lammps-configure.log"; die "LAMMPS configure failed"; }
      cmake --build "$work/lammps-build" --parallel "$jobs" >"$work/lammps-build.log" 2>&1 ||
        { grep -m20 error "$work/lammps-build.log"; die "LAMMPS build failed"; }
      cmake --install "$work/lammps-build" >/dev/null
      lammps_prefix=$work/lammps-install
      log "LAMMPS built in $(($(date +%s) - t0)) s"
    fi
    lammps_src=$work/lammps-src/src
    [ -d "$lammps_src" ] || lammps_src=""
    if [ -z "$plugin" ]; then
      t1=$(date +%s)
      torch_prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')
      if [ -z "$lammps_src" ]; then
        cache_file=$(dirname "$lammps_prefix")/build/CMakeCache.txt
        lammps_src=$(sed -n 's/^lammps_SOURCE_DIR:STATIC=\(.*\)\/cmake$/\1/p' "$cache_file")/src
      fi
      log "building the plugin against torch in $torch_prefix"
      # torch's CMake wants the CUDA toolkit for a CUDA wheel; nvcc must be on PATH
      cmake -S "$repo" -B "$work/plugin-build" -D CMAKE_BUILD_TYPE=Release \
        -D "CMAKE_PREFIX_PATH=$lammps_prefix;$torch_prefix" -D "LAMMPS_SOURCE_DIR=$lammps_src" \
        >"$work/plugin-configure.log" 2>&1 ||
        { tail -40 "$work/plugin-configure.log"; die "plugin configure failed"; }
      cmake --build "$work/plugin-build" --parallel "$jobs" >"$work/plugin-build.log" 2>&1 ||
        { grep -m20 -i error "$work/plugin-build.log"; die "plugin build failed"; }
      plugin=$work/plugin-build/facetplugin.so
      log "plugin built in $(($(date +%s) - t1)) s"
    fi
    printf 'build seconds (LAMMPS + plugin): %s\n' "$(($(date +%s) - t0))" | tee -a "$out/env.txt"
    "$py" "$here/gpu_plugin_check.py" --dir "$dir" --lmp "$lammps_prefix/bin/lmp" \
      --plugin "$plugin" --device "$device" --sizes "$sizes" --out "$out/plugin_gpu.json" \
      ${check_args[@]+"${check_args[@]}"}
    ;;
  *) usage; exit 2 ;;
esac
