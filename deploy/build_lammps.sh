#!/usr/bin/env bash
# Build (once) and cache a LAMMPS that runs Facet models through ML-IAP unified:
# shared liblammps + `lmp` with MPI, ML-IAP (+ Python models), ML-SNAP, PYTHON, PLUGIN,
# MANYBODY and, by default, KOKKOS (OpenMP + Serial) so one build serves both
# `pair_style mliap` and `-k on t N -sf kk` (mliap/kk).
#
# The build lives outside the repo, in a cache keyed on the LAMMPS version and a hash
# of everything that changes the result; a rerun with the same inputs only refreshes
# the venv's `lammps` Python module if needed and runs the smoke test (seconds).
#
# Usage: deploy/build_lammps.sh [options]   (options also as environment variables)
#   --source PATH        LAMMPS source tree or tarball        FACET_LAMMPS_SOURCE
#                        (default: Debian source package lammps=20260704+dfsg-2)
#   --kokkos / --no-kokkos   KOKKOS package on/off            FACET_LAMMPS_KOKKOS=1|0 (1)
#   --external-kokkos    use an installed Kokkos (Kokkos_ROOT)  FACET_LAMMPS_EXTERNAL_KOKKOS=1
#   --kokkos-tarball F   Kokkos source tarball to use when the LAMMPS tree has no
#                        lib/kokkos                            FACET_KOKKOS_TARBALL
#                        (default: ../shared/vendor/kokkos-4.6.99-28848dfa.tar.gz)
#   --cmake-arg ARG      extra cmake argument (repeatable)     FACET_LAMMPS_CMAKE_ARGS
#                        (space-separated, e.g. "-D Kokkos_ENABLE_CUDA=on -D Kokkos_ARCH_HOPPER90=on")
#   --cache DIR          cache root         FACET_LAMMPS_CACHE (~/.cache/facet-lammps)
#   --venv DIR           Python venv        FACET_VENV (<repo>/.venv)
#   --jobs N             parallel build jobs FACET_LAMMPS_JOBS ($(nproc))
#   --force              rebuild even if the cached install is complete
#   --no-smoke           skip the final smoke test           FACET_LAMMPS_SMOKE=0
#   --dry-run            prepare the source, print the cache key and directory, stop
#   -h, --help
set -euo pipefail

# --------------------------------------------------------------------------- constants
readonly DEB_PKG_VERSION="20260704+dfsg-2"
readonly DEB_ORIG="lammps_20260704+dfsg.orig.tar.gz"
readonly DEB_ORIG_SHA256="cddbc45a047416bd48a4a0b87f24a5b61b3446982b74d18cafe619c22b17eb62"
readonly KOKKOS_VENDOR_NAME="kokkos-4.6.99-28848dfa.tar.gz"
readonly KOKKOS_VENDOR_SHA256="f37ebcfc78b784228e48310d9524e205ea62be6b3cabee061f59468a086822f5"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

log() { printf '[build_lammps] %s\n' "$*"; }
die() {
  printf '[build_lammps] error: %s\n' "$1" >&2
  shift
  local line
  for line in "$@"; do printf '               %s\n' "$line" >&2; done
  exit 1
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }
hash_str() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# --------------------------------------------------------------------------- options
source_arg=${FACET_LAMMPS_SOURCE:-}
kokkos=${FACET_LAMMPS_KOKKOS:-1}
external_kokkos=${FACET_LAMMPS_EXTERNAL_KOKKOS:-0}
kokkos_tarball=${FACET_KOKKOS_TARBALL:-$repo/../shared/vendor/$KOKKOS_VENDOR_NAME}
cache=${FACET_LAMMPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/facet-lammps}
venv=${FACET_VENV:-$repo/.venv}
jobs=${FACET_LAMMPS_JOBS:-$(nproc)}
smoke=${FACET_LAMMPS_SMOKE:-1}
force=0
dry_run=0
extra_args=()
if [ -n "${FACET_LAMMPS_CMAKE_ARGS:-}" ]; then
  read -r -a extra_args <<<"$FACET_LAMMPS_CMAKE_ARGS"
fi

need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "option $1 needs a value (see --help)"; fi; }
while [ $# -gt 0 ]; do
  case $1 in
    --source) need_value "$@"; source_arg=$2; shift 2 ;;
    --kokkos) kokkos=1; shift ;;
    --no-kokkos) kokkos=0; shift ;;
    --external-kokkos) external_kokkos=1; shift ;;
    --kokkos-tarball) need_value "$@"; kokkos_tarball=$2; shift 2 ;;
    --cmake-arg) need_value "$@"; extra_args+=("$2"); shift 2 ;;
    --cache) need_value "$@"; cache=$2; shift 2 ;;
    --venv) need_value "$@"; venv=$2; shift 2 ;;
    --jobs|-j) need_value "$@"; jobs=$2; shift 2 ;;
    --force) force=1; shift ;;
    --no-smoke) smoke=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
case $kokkos in 0|1) ;; *) die "FACET_LAMMPS_KOKKOS must be 0 or 1, not '$kokkos'" ;; esac
case $external_kokkos in 0|1) ;; *) die "FACET_LAMMPS_EXTERNAL_KOKKOS must be 0 or 1" ;; esac
case $jobs in ''|*[!0-9]*) die "--jobs needs a number, not '$jobs'" ;; esac

# --------------------------------------------------------------------------- prerequisites
for tool in cmake make tar patch sha256sum mpicxx mpirun; do
  command -v "$tool" >/dev/null ||
    die "'$tool' not found" "install build tools and MPI first: bash deploy/setup_env.sh" \
        "(Debian: apt-get install build-essential cmake mpich libmpich-dev; clusters: module load cmake gcc mpi)"
done
py=$venv/bin/python
[ -x "$py" ] || die "no Python venv at $venv" \
  "create it with: bash deploy/setup_env.sh   (or pass --venv DIR / FACET_VENV)"
"$py" -c 'import Cython, numpy' 2>/dev/null ||
  die "$py lacks Cython and/or NumPy, which ML-IAP's Python coupling needs at configure time" \
      "install them: $py -m pip install cython numpy   (or rerun deploy/setup_env.sh)"
[ "$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED"))')" = 1 ] ||
  die "$py is not a shared-libpython build; LAMMPS' PYTHON package embeds libpython" \
      "make the venv from a Python configured with --enable-shared (FACET_PYTHON for setup_env.sh)"

mkdir -p "$cache/src"
cache=$(cd "$cache" && pwd)
# One build at a time per cache (a second run waits instead of racing).
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
fi

# --------------------------------------------------------------------------- LAMMPS source
# Result: $src (pristine tree + our patches), $source_id (what goes into the cache key).
fetch_debian_source() {
  local tarball=$cache/src/$DEB_ORIG
  if [ -f "$tarball" ] && [ "$(sha256 "$tarball")" = "$DEB_ORIG_SHA256" ]; then
    return 0
  fi
  rm -f "$tarball"
  local mirror=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
  fi
  [ -n "$mirror" ] || die "cannot find a Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list" \
    "download a LAMMPS source tarball yourself and pass --source PATH (or FACET_LAMMPS_SOURCE)"
  command -v apt-get >/dev/null || die "apt-get not found (not a Debian-like system)" \
    "download LAMMPS (4 Jul 2026 or later) yourself and pass --source PATH"
  [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] ||
    die "/usr/share/keyrings/debian-archive-keyring.gpg missing (apt-get install debian-archive-keyring)" \
        "or pass --source PATH with your own LAMMPS source"
  log "downloading Debian source package lammps=$DEB_PKG_VERSION (mirror from the system's apt config)"
  local apt=$cache/apt
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  {
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s sid main\n' "$mirror"
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' "$mirror"
  } >"$apt/sources.list"
  local aptopts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
                 -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
  [ "$(id -u)" -eq 0 ] && aptopts+=(-o APT::Sandbox::User=root)
  apt-get "${aptopts[@]}" -qq update ||
    die "apt-get update with the private source list ($apt/sources.list) failed" \
        "download LAMMPS yourself and pass --source PATH"
  # --tar-only: the .dsc/.debian.tar.xz may 404 while the orig tarball arrives fine.
  (cd "$cache/src" && apt-get "${aptopts[@]}" source --download-only --tar-only "lammps=$DEB_PKG_VERSION") ||
    [ -f "$tarball" ] ||
    die "apt-get source lammps=$DEB_PKG_VERSION failed" "download LAMMPS yourself and pass --source PATH"
  [ -f "$tarball" ] || die "apt-get did not produce $tarball"
  local got
  got=$(sha256 "$tarball")
  [ "$got" = "$DEB_ORIG_SHA256" ] || {
    rm -f "$tarball"
    die "sha256 mismatch for $DEB_ORIG: got $got, expected $DEB_ORIG_SHA256"
  }
}

# unpack_tarball TARBALL DEST: unpack a LAMMPS tarball (with or without a top-level
# folder) so that DEST/cmake/CMakeLists.txt exists; records whether it had lib/kokkos.
unpack_tarball() {
  local tarball=$1 dest=$2
  if [ -f "$dest/.facet-unpacked" ]; then return 0; fi
  log "unpacking $(basename "$tarball")"
  rm -rf "$dest" "$dest.tmp"
  mkdir -p "$dest.tmp"
  tar -xf "$tarball" -C "$dest.tmp"
  local root=$dest.tmp
  if [ ! -f "$root/cmake/CMakeLists.txt" ]; then
    local sub
    sub=$(find "$dest.tmp" -mindepth 2 -maxdepth 3 -path '*/cmake/CMakeLists.txt' -print -quit)
    [ -n "$sub" ] || { rm -rf "$dest.tmp"; die "$tarball does not look like LAMMPS source (no cmake/CMakeLists.txt)"; }
    root=$(dirname "$(dirname "$sub")")
  fi
  mark_unpacked "$root"
  if [ "$root" = "$dest.tmp" ]; then mv "$dest.tmp" "$dest"
  else mv "$root" "$dest" && rm -rf "$dest.tmp"; fi
}
mark_unpacked() {
  local has=0
  [ -f "$1/lib/kokkos/CMakeLists.txt" ] && has=1
  printf 'kokkos_in_tree=%s\n' "$has" >"$1/.facet-unpacked"
}

# prepare_source: set $src and $source_id and make sure $src holds the unpacked tree.
prepare_source() {
  if [ -z "$source_arg" ]; then
    src=$cache/src/lammps-$DEB_PKG_VERSION
    source_id="debian:lammps=$DEB_PKG_VERSION:$DEB_ORIG_SHA256"
    if [ ! -f "$src/.facet-unpacked" ]; then
      fetch_debian_source
      unpack_tarball "$cache/src/$DEB_ORIG" "$src"
    fi
  elif [ -f "$source_arg" ]; then
    local tb tb_sha
    tb=$(cd "$(dirname "$source_arg")" && pwd)/$(basename "$source_arg")
    tb_sha=$(sha256 "$tb")
    src=$cache/src/tarball-${tb_sha:0:16}
    source_id="tarball:$tb_sha"
    unpack_tarball "$tb" "$src"
  elif [ -d "$source_arg" ]; then
    local sdir
    sdir=$(cd "$source_arg" && pwd)
    if [ ! -f "$sdir/cmake/CMakeLists.txt" ] || [ ! -f "$sdir/src/version.h" ]; then
      die "$sdir is not a LAMMPS source tree (expected cmake/CMakeLists.txt and src/version.h)"
    fi
    # Build from a private copy so the user's tree is never patched; --force re-copies.
    src=$cache/src/dir-$(hash_str "$sdir" | cut -c1-16)
    source_id="dir:$sdir"
    if [ "$force" = 1 ] || [ ! -f "$src/.facet-unpacked" ]; then
      log "copying $sdir to $src (the original is left untouched)"
      rm -rf "$src" "$src.tmp"
      mkdir -p "$src.tmp"
      tar -C "$sdir" --exclude=./.git --exclude='./build*' --exclude=./examples --exclude=./bench \
        -cf - . | tar -C "$src.tmp" -xf -
      mark_unpacked "$src.tmp"
      mv "$src.tmp" "$src"
    fi
  else
    die "--source $source_arg: no such file or directory"
  fi
}
prepare_source

lammps_date=$(sed -n 's/^#define LAMMPS_VERSION "\(.*\)"/\1/p' "$src/src/version.h")
lammps_version=$(date -d "$lammps_date" +%Y%m%d 2>/dev/null) ||
  die "cannot parse LAMMPS_VERSION '$lammps_date' in $src/src/version.h"
log "LAMMPS $lammps_date ($lammps_version) from $source_id"

# --------------------------------------------------------------------------- patches
# apply_patch DIR PATCH STRICT: idempotent `patch -p1`; already applied -> nothing.
# Prints "applied" or "skipped" (STRICT=0: a patch that does not fit is skipped with a warning).
apply_patch() {
  local dir=$1 p=$2 strict=$3
  if patch -d "$dir" -p1 -R -s -f --fuzz=0 --dry-run <"$p" >/dev/null 2>&1; then
    echo applied
  elif patch -d "$dir" -p1 -N -s -f --fuzz=0 --dry-run <"$p" >/dev/null 2>&1; then
    patch -d "$dir" -p1 -N -s -f --fuzz=0 <"$p" >&2 || die "applying $p in $dir failed"
    log "patched $(basename "$p") into $dir" >&2
    echo applied
  elif [ "$strict" = 1 ]; then
    die "patch $p does not apply to $dir" "(was the source tree modified? delete $dir and rerun)"
  else
    log "warning: $(basename "$p") does not apply to this LAMMPS version; skipped (check that upstream fixed it)" >&2
    echo skipped
  fi
}

strict=0
[ -z "$source_arg" ] && strict=1
lammps_patches=()
for p in "$here"/patches/lammps-*.patch; do
  [ -f "$p" ] && lammps_patches+=("$p")
done
patchset=$(for p in "${lammps_patches[@]}"; do sha256 "$p"; done | sha256sum | cut -d' ' -f1)
# A tree patched with an older version of our patches is unpacked afresh.
if [ -f "$src/.facet-patched" ] && [ "$(cat "$src/.facet-patched")" != "$patchset" ]; then
  log "patches changed since $src was prepared: preparing the source again"
  rm -rf "$src"
  prepare_source
fi
patch_ids=""
for p in "${lammps_patches[@]}"; do
  state=$(apply_patch "$src" "$p" "$strict")
  patch_ids+="$(basename "$p"):$(sha256 "$p"):$state;"
done
printf '%s' "$patchset" >"$src/.facet-patched"

# --------------------------------------------------------------------------- Kokkos source
kokkos_choice=off
kokkos_args=()
if [ "$kokkos" = 1 ]; then
  kokkos_args=(-C "$here/lammps-facet-kokkos.cmake")
  if [ "$external_kokkos" = 1 ]; then
    kokkos_choice="external:${Kokkos_ROOT:-}:${CMAKE_PREFIX_PATH:-}"
    kokkos_args+=(-D EXTERNAL_KOKKOS=on)
    log "KOKKOS: external Kokkos (Kokkos_ROOT=${Kokkos_ROOT:-unset}); LAMMPS $lammps_date needs Kokkos >= 5.1"
  elif grep -q '^kokkos_in_tree=1' "$src/.facet-unpacked"; then
    kv=$(sed -n 's/^ *set(Kokkos_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)).*/\2/p' "$src/lib/kokkos/CMakeLists.txt" | paste -sd. -)
    kokkos_choice="bundled:${kv:-unknown}"
    log "KOKKOS: Kokkos ${kv:-?} bundled in the LAMMPS tree (lib/kokkos)"
  else
    kk_name=$(basename "$kokkos_tarball")
    kk_patch=""
    kk_patch_sha=none
    if [ "$kk_name" = "$KOKKOS_VENDOR_NAME" ]; then
      kk_patch=$here/patches/kokkos-4.6.99-host-mirror-type.patch
      kk_patch_sha=$(sha256 "$kk_patch")
    fi
    marker=$src/lib/kokkos/.facet-vendored
    if [ -f "$kokkos_tarball" ]; then
      kk_sha=$(sha256 "$kokkos_tarball")
      if [ -n "$kk_patch" ] && [ "$kk_sha" != "$KOKKOS_VENDOR_SHA256" ]; then
        die "sha256 mismatch for $kokkos_tarball: got $kk_sha, expected $KOKKOS_VENDOR_SHA256"
      fi
      want="tarball=$kk_sha patch=$kk_patch_sha"
    elif [ -f "$marker" ] && [ "$(cut -d' ' -f2 "$marker")" = "patch=$kk_patch_sha" ]; then
      want=$(cat "$marker")   # prepared from the tarball earlier; it is no longer needed
      log "KOKKOS: $kokkos_tarball not found; reusing the lib/kokkos unpacked from it before"
    else
      die "KOKKOS is on, the LAMMPS tree has no lib/kokkos and the Kokkos tarball is missing:" \
        "  $kokkos_tarball   (CI: put shared/ beside the repo clone)" \
        "pass one of: --kokkos-tarball FILE (FACET_KOKKOS_TARBALL), --source <LAMMPS release with lib/kokkos>," \
        "--external-kokkos with Kokkos_ROOT=<Kokkos >= 5.1 install>, or --no-kokkos (FACET_LAMMPS_KOKKOS=0)"
    fi
    if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "$want" ]; then
      log "KOKKOS: unpacking $kk_name into $src/lib/kokkos"
      rm -rf "$src/lib/kokkos" "$src/lib/kokkos.tmp"
      mkdir -p "$src/lib/kokkos.tmp"
      tar -xf "$kokkos_tarball" -C "$src/lib/kokkos.tmp"
      kroot=$(dirname "$(find "$src/lib/kokkos.tmp" -maxdepth 2 -name CMakeLists.txt -print -quit)")
      [ -f "$kroot/core/src/Kokkos_Core.hpp" ] || die "$kokkos_tarball does not look like Kokkos source"
      mv "$kroot" "$src/lib/kokkos"
      rm -rf "$src/lib/kokkos.tmp"
      if [ -n "$kk_patch" ]; then apply_patch "$src/lib/kokkos" "$kk_patch" 1 >/dev/null; fi
      printf '%s' "$want" >"$marker"
    fi
    kokkos_choice="vendored:$kk_name:$want"
    log "KOKKOS: $kk_name unpacked as lib/kokkos${kk_patch:+ (+ host_mirror_type patch)}"
  fi
  # CUDA builds compile through Kokkos' nvcc_wrapper unless the user picked a compiler.
  if printf '%s\n' "${extra_args[@]}" | grep -qi 'Kokkos_ENABLE_CUDA=\(on\|yes\|true\|1\)' &&
     ! printf '%s\n' "${extra_args[@]}" | grep -q 'CMAKE_CXX_COMPILER' &&
     [ -x "$src/lib/kokkos/bin/nvcc_wrapper" ]; then
    kokkos_args+=(-D "CMAKE_CXX_COMPILER=$src/lib/kokkos/bin/nvcc_wrapper")
  fi
fi

# --------------------------------------------------------------------------- cache key
cmake_files=("$here/lammps-facet.cmake")
[ "$kokkos" = 1 ] && cmake_files+=("$here/lammps-facet-kokkos.cmake")
key_text=$(
  printf 'lammps_version=%s\nsource=%s\n' "$lammps_version" "$source_id"
  for f in "${cmake_files[@]}"; do printf 'cmake_file=%s:%s\n' "$(basename "$f")" "$(sha256 "$f")"; done
  printf 'cmake_args=%s\n' "${kokkos_args[*]} ${extra_args[*]}"
  printf 'patches=%s\nkokkos=%s\npython=%s\n' "$patch_ids" "$kokkos_choice" "$py"
)
key=$(hash_str "$key_text" | cut -c1-12)
keydir=$cache/$lammps_version-$key
build=$keydir/build
prefix=$keydir/install
stamp=$prefix/.facet-build-complete

complete() { [ -f "$stamp" ] && [ -x "$prefix/bin/lmp" ] && [ -e "$build/liblammps.so" ]; }

if [ "$dry_run" = 1 ]; then
  printf '%s\n' "$key_text"
  state="not built"
  if complete; then state="complete"; fi
  log "dry run: key $key -> $keydir ($state)"
  exit 0
fi

# --------------------------------------------------------------------------- configure + build
activate_venv() { export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH; unset PYTHONHOME; }

if [ "$force" = 0 ] && complete; then
  log "cached build found: $keydir (skip configure/build; --force rebuilds)"
else
  mkdir -p "$build"
  printf '%s\n' "$key_text" >"$keydir/key.txt"
  rm -f "$stamp"
  t0=$(date +%s)
  log "configuring in $build"
  (
    activate_venv
    cmake -C "$here/lammps-facet.cmake" "${kokkos_args[@]}" \
      -D "CMAKE_INSTALL_PREFIX=$prefix" -D "CMAKE_INSTALL_RPATH=$prefix/lib" \
      -D "Python_EXECUTABLE=$py" "${extra_args[@]}" \
      -S "$src/cmake" -B "$build"
  ) 2>&1 | tee "$keydir/configure.log"
  grep -q 'Defines:.*MLIAP_PYTHON' "$keydir/configure.log" ||
    die "configure did not enable MLIAP_PYTHON (no 'MLIAP_PYTHON' in Defines; see $keydir/configure.log)" \
        "ML-IAP's Python coupling needs Cython and NumPy in $py and Python_EXECUTABLE set to it"
  if [ "$kokkos" = 1 ]; then
    grep -q 'Defines:.*LMP_KOKKOS' "$keydir/configure.log" ||
      die "KOKKOS requested but LMP_KOKKOS is not in the configure Defines (see $keydir/configure.log)"
  fi
  log "building with $jobs jobs (about 11 min on 2 cores with KOKKOS, 9 min without)"
  cmake --build "$build" --parallel "$jobs"
  cmake --install "$build"
  (activate_venv && cmake --build "$build" --target install-python)
  t1=$(date +%s)
  printf 'build seconds: %s\n' "$((t1 - t0))" >"$keydir/build-time.txt"
  log "configure + build + install took $((t1 - t0)) s"
fi

# --------------------------------------------------------------------------- venv's lammps module
# install-python copies build/liblammps.so into site-packages: refresh it whenever that
# copy is missing or differs from this build (another key built later, a rebuild, ...).
lib_built=$(readlink -f "$build/liblammps.so")
lib_in_venv=$(cd / || exit 1; "$py" -c '
import glob, os, lammps
d = os.path.dirname(lammps.__file__)
libs = sorted(glob.glob(os.path.join(d, "liblammps*.so*")))
print(libs[0] if libs else "")' 2>/dev/null || true)
if [ -z "$lib_in_venv" ] || ! cmp -s "$lib_in_venv" "$lib_built"; then
  log "installing the lammps Python module into $venv"
  (activate_venv && cmake --build "$build" --target install-python) >"$keydir/install-python.log" 2>&1 ||
    die "install-python failed, see $keydir/install-python.log"
else
  log "lammps Python module in $venv matches this build"
fi

# --------------------------------------------------------------------------- env file + pointers
envfile=$prefix/facet-lammps.env
cat >"$envfile" <<EOF
# Source this file to use the Facet LAMMPS build: . $envfile
# The venv's bin comes first so that lmp's embedded Python (which finds its prefix
# through the first python3 on PATH) sees the venv's packages (facet, torch).
export PATH="$prefix/bin:$venv/bin\${PATH:+:\$PATH}"
export LD_LIBRARY_PATH="$prefix/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LAMMPS_POTENTIALS="$prefix/share/lammps/potentials"
export FACET_LMP="$prefix/bin/lmp"
export OMP_PROC_BIND="\${OMP_PROC_BIND:-false}"
EOF
printf '%s\n' "$prefix" >"$venv/facet-lammps-prefix"
ln -sfn "$prefix/bin/lmp" "$venv/bin/lmp"
[ -f "$stamp" ] || printf '%s\n' "$key_text" >"$stamp"   # written last: marks the install complete

# --------------------------------------------------------------------------- smoke test
if [ "$smoke" = 1 ]; then
  log "smoke test"
  (
    activate_venv
    export OMP_NUM_THREADS=1 OMP_PROC_BIND=false
    cd "$keydir"
    FACET_KOKKOS=$kokkos "$py" - <<'EOF'
import os
import lammps
lmp = lammps.lammps(cmdargs=["-log", "none", "-nocite", "-screen", "none"])
want = ["ML-IAP", "PYTHON", "PLUGIN"] + (["KOKKOS"] if os.environ["FACET_KOKKOS"] == "1" else [])
missing = [p for p in want if not lmp.has_package(p)]
print(f"  python module {lammps.__file__}: LAMMPS {lmp.version()}, MPI {lmp.has_mpi_support},"
      f" packages {' '.join(lmp.installed_packages)}")
lmp.close()
if missing:
    raise SystemExit(f"missing packages: {missing}")
EOF
    help=$("$prefix/bin/lmp" -h)
    if [ "$kokkos" = 1 ]; then
      grep -q 'mliap/kk' <<<"$help" || die "'lmp -h' does not list mliap/kk although KOKKOS is on"
      echo "  lmp -h lists mliap/kk"
    fi
    grep -qw 'mliap' <<<"$help" || die "'lmp -h' does not list pair style mliap"
  ) || die "smoke test failed"
  log "smoke test passed"
fi

log "done: lmp is $prefix/bin/lmp (also $venv/bin/lmp)"
log "      environment: . $envfile"
