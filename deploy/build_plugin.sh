#!/usr/bin/env bash
# Build (once) and cache the native LAMMPS plugin `pair_style facet` (lammps_plugin/ + the
# top-level CMakeLists.txt) against the project's installed LAMMPS and the venv's libtorch.
#
# The build lives outside the repo, in a cache keyed on the plugin sources, the LAMMPS install
# (prefix, its build stamp and library), the torch version and location, and the compiler; a
# rerun with the same inputs only re-runs the smoke test (seconds). Afterwards the venv file
# `facet-lammps-plugin` holds the absolute path of facetplugin.so (facet-deploy --format plugin
# prints it in the `plugin load` line).
#
# Usage: deploy/build_plugin.sh [options]   (options also as environment variables)
#   --lammps-prefix DIR  installed LAMMPS (lib/cmake/LAMMPS)   FACET_LAMMPS_PREFIX
#                        (default: the path in <venv>/facet-lammps-prefix, from build_lammps.sh)
#   --lammps-source DIR  LAMMPS source tree (its src/ has lammpsplugin.h, version.h)
#                        FACET_LAMMPS_SOURCE_TREE (default: read from the LAMMPS build's CMakeCache)
#   --torch-prefix DIR   libtorch CMake prefix   FACET_TORCH_PREFIX (default: the venv's torch)
#   --cache DIR          cache root         FACET_LAMMPS_CACHE (~/.cache/facet-lammps)
#   --venv DIR           Python venv        FACET_VENV (<repo>/.venv)
#   --jobs N             parallel build jobs FACET_PLUGIN_JOBS ($(nproc))
#   --force              rebuild even if the cached plugin is complete
#   --no-smoke           skip the smoke test (plugin load + registered style)
#   -h, --help
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

log() { printf '[build_plugin] %s\n' "$*"; }
die() {
  printf '[build_plugin] error: %s\n' "$1" >&2
  shift
  local line
  for line in "$@"; do printf '               %s\n' "$line" >&2; done
  exit 1
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
hash_str() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

venv=${FACET_VENV:-$repo/.venv}
lammps_prefix=${FACET_LAMMPS_PREFIX:-}
lammps_source=${FACET_LAMMPS_SOURCE_TREE:-}
torch_prefix=${FACET_TORCH_PREFIX:-}
cache=${FACET_LAMMPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/facet-lammps}
jobs=${FACET_PLUGIN_JOBS:-$(nproc)}
force=0
smoke=1
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "option $1 needs a value (see --help)"; fi; }
while [ $# -gt 0 ]; do
  case $1 in
    --lammps-prefix) need_value "$@"; lammps_prefix=$2; shift 2 ;;
    --lammps-source) need_value "$@"; lammps_source=$2; shift 2 ;;
    --torch-prefix) need_value "$@"; torch_prefix=$2; shift 2 ;;
    --cache) need_value "$@"; cache=$2; shift 2 ;;
    --venv) need_value "$@"; venv=$2; shift 2 ;;
    --jobs|-j) need_value "$@"; jobs=$2; shift 2 ;;
    --force) force=1; shift ;;
    --no-smoke) smoke=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

for tool in cmake make c++ sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' not found" "install build tools first: bash deploy/setup_env.sh"
done
py=$venv/bin/python

# ----------------------------------------------------------------------------- inputs
if [ -z "$lammps_prefix" ]; then
  [ -f "$venv/facet-lammps-prefix" ] ||
    die "no LAMMPS install recorded in $venv/facet-lammps-prefix" \
        "build LAMMPS first (bash deploy/build_lammps.sh) or pass --lammps-prefix DIR"
  lammps_prefix=$(cat "$venv/facet-lammps-prefix")
fi
lammps_prefix=$(cd "$lammps_prefix" && pwd)
[ -f "$lammps_prefix/lib/cmake/LAMMPS/LAMMPSConfig.cmake" ] ||
  die "$lammps_prefix has no lib/cmake/LAMMPS/LAMMPSConfig.cmake" \
      "the plugin needs an installed LAMMPS built as a shared library (BUILD_SHARED_LIBS=on)"
if [ -z "$lammps_source" ]; then
  cache_file=$(dirname "$lammps_prefix")/build/CMakeCache.txt
  if [ -f "$cache_file" ]; then
    lammps_source=$(sed -n 's/^lammps_SOURCE_DIR:STATIC=\(.*\)\/cmake$/\1/p' "$cache_file")
  fi
  [ -n "$lammps_source" ] ||
    die "cannot find the LAMMPS source tree of $lammps_prefix (no build/CMakeCache.txt beside it)" \
        "pass --lammps-source DIR (the tree LAMMPS was built from)"
fi
lammps_src=$lammps_source/src
[ -f "$lammps_src/lammpsplugin.h" ] && [ -f "$lammps_src/version.h" ] ||
  die "$lammps_src lacks lammpsplugin.h / version.h: not a LAMMPS source tree"
if [ -z "$torch_prefix" ]; then
  [ -x "$py" ] || die "no Python venv at $venv" "create it with: bash deploy/setup_env.sh (or pass --torch-prefix DIR)"
  torch_prefix=$(cd / && "$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  torch_abi=$(cd / && "$py" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
  [ "$torch_abi" = 1 ] ||
    die "the venv's torch uses the old C++ ABI (_GLIBCXX_USE_CXX11_ABI=0); LAMMPS passes std::string" \
        "across the plugin boundary: install a torch >= 2.7 wheel (new ABI)"
fi
torch_prefix=$(cd "$torch_prefix" && pwd -P)
torch_version_file=$torch_prefix/Torch/TorchConfigVersion.cmake
torch_version=$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")/\1/p' "$torch_version_file" 2>/dev/null || true)
[ -n "$torch_version" ] || die "no TorchConfigVersion.cmake under $torch_prefix"

# ----------------------------------------------------------------------------- cache key
sources=("$repo/CMakeLists.txt" "$repo"/lammps_plugin/*.cpp "$repo"/lammps_plugin/*.h
         "$repo"/facet/ops/*.cpp)
# the fused kernels' vector ISA flags, as the Python side builds them (facet.ops.isa_flags)
ops_isa_flags=$(cd "$repo" && "$py" -c 'from facet.ops import isa_flags; print(" ".join(isa_flags()))')
lib=$lammps_prefix/lib/liblammps.so
key_text=$(
  for f in "${sources[@]}"; do printf 'source=%s:%s\n' "${f#"$repo"/}" "$(sha256sum "$f" | cut -d' ' -f1)"; done
  printf 'lammps_prefix=%s\n' "$lammps_prefix"
  printf 'lammps_stamp=%s\n' "$(cat "$lammps_prefix/.facet-build-complete" 2>/dev/null | sha256sum | cut -d' ' -f1)"
  printf 'lammps_lib=%s\n' "$(stat -L -c '%s:%Y' "$lib" 2>/dev/null)"
  printf 'lammps_version_h=%s\n' "$(sha256sum "$lammps_src/version.h" | cut -d' ' -f1)"
  printf 'torch=%s:%s\n' "$torch_version" "$torch_prefix"
  printf 'compiler=%s\n' "$(c++ --version | head -1)"
  printf 'ops_isa_flags=%s\n' "$ops_isa_flags"
)
key=$(hash_str "$key_text" | cut -c1-12)
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
keydir=$cache/plugin-$key
so=$keydir/install/lib/facetplugin.so
stamp=$keydir/.complete

if command -v flock >/dev/null; then
  exec 9>"$cache/.plugin-lock"
  flock 9
fi

if [ "$force" = 0 ] && [ -f "$stamp" ] && [ -f "$so" ]; then
  log "cached build found: $so (--force rebuilds)"
else
  rm -rf "$keydir"
  mkdir -p "$keydir"
  printf '%s\n' "$key_text" >"$keydir/key.txt"
  t0=$(date +%s)
  log "configuring against LAMMPS $lammps_prefix and torch $torch_version"
  cmake -S "$repo" -B "$keydir/build" -D CMAKE_BUILD_TYPE=Release \
    -D "CMAKE_PREFIX_PATH=$lammps_prefix;$torch_prefix" -D "LAMMPS_SOURCE_DIR=$lammps_src" \
    -D "CMAKE_INSTALL_PREFIX=$keydir/install" -D CMAKE_INSTALL_LIBDIR=lib \
    -D "FACET_OPS_ISA_FLAGS=$ops_isa_flags" \
    >"$keydir/configure.log" 2>&1 || { tail -30 "$keydir/configure.log" >&2; die "configure failed (see $keydir/configure.log)"; }
  log "building with $jobs jobs (about 1 min on 2 cores)"
  cmake --build "$keydir/build" --parallel "$jobs" >"$keydir/build.log" 2>&1 ||
    { grep -E 'error' "$keydir/build.log" | head -20 >&2; die "build failed (see $keydir/build.log)"; }
  cmake --install "$keydir/build" >"$keydir/install.log" 2>&1 || die "install failed (see $keydir/install.log)"
  [ -f "$so" ] || die "the build did not produce $so"
  printf 'build seconds: %s\n' "$(($(date +%s) - t0))" >"$keydir/build-time.txt"
  printf '%s\n' "$key_text" >"$stamp"
  log "built $so in $(($(date +%s) - t0)) s"
fi

# ----------------------------------------------------------------------------- smoke test
# `plugin load` only logs a failed dlopen: check that the style really registered.
if [ "$smoke" = 1 ]; then
  lmp=$lammps_prefix/bin/lmp
  [ -x "$lmp" ] || die "no $lmp for the smoke test (--no-smoke skips it)"
  out=$(cd "$keydir" && printf 'plugin load %s\nplugin list\n' "$so" |
        OMP_NUM_THREADS=1 "$lmp" -log none -nocite 2>&1 || true)
  grep -q 'pair style plugin facet' <<<"$out" ||
    die "smoke test: 'plugin load $so' did not register pair style facet; LAMMPS said:" \
        "$(grep -iE 'plugin|error|open' <<<"$out" | head -5)"
  log "smoke test passed: lmp registers pair style facet from $so"
fi

printf '%s\n' "$so" >"$venv/facet-lammps-plugin"
log "done: plugin load $so"
