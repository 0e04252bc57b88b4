#!/usr/bin/env bash
# Create the Python environments of the two peer models (MACE, SevenNet) and export them for
# LAMMPS' ML-IAP unified interface, so the project's LAMMPS build (KOKKOS on CPU) runs them with
# `pair_style mliap/kk unified <file> 0`, like Facet.
#
# Separate environments: mace-torch 0.3.16 pins e3nn 0.4.4, SevenNet 0.13.0 needs e3nn >= 0.5 and
# torch_geometric, Facet needs e3nn >= 0.5.6; none can share a venv. Both peers get torch 2.13.0
# (the CPU build, installed first and pinned; everything else under a constraints file keeping it).
#   MACE:     ${MACE_VENV:-$cache/mace-venv} from setup_mace_env.sh (torch 2.13.0, mace-torch
#             0.3.16, e3nn 0.4.4) + cuequivariance / cuequivariance-torch 0.13.0, which
#             `mace_create_lammps_model --format mliap` needs (it converts the model to
#             cuequivariance; on CPU cuequivariance-torch runs its naive fallback).
#   SevenNet: ${SEVENN_VENV:-$cache/sevenn-venv}: torch 2.13.0, sevenn 0.13.0 (e3nn 0.6,
#             torch_geometric, matscipy); the SevenNet-0 (11Jul2024) checkpoint ships in the wheel.
# ($cache = ${FACET_BENCH_CACHE:-$HOME/.cache/facet-bench}; Python: ${FACET_PYTHON:-python3}.)
# Both venvs get the `lammps` Python module of the project's LAMMPS build (the build's wheel, else
# a copy of the package in .venv): the peers' ML-IAP classes subclass
# lammps.mliap.mliap_unified_abc.MLIAPUnified, and lmp's embedded Python imports them from the
# venv whose python3 is first on PATH.
#
# Exports, to ${PEER_MODELS:-$cache/peer-models}/ (pickles; LAMMPS torch.load()s *.pt files):
#   sevenn-0-mliap.pt                 `sevenn_get_model 7net-0 -mliap` (float32 inside)
#   mace-small-float64-mliap.pt       `mace_create_lammps_model --format mliap --dtype float64`
#   mace-small-float32-mliap.pt       same, --dtype float32
#   mace-small-float{64,32}-e3nn-mliap.pt  the same wrapper without the cuequivariance
#                                     conversion (plain e3nn; an alternative CPU path)
# The MACE models are benchmarks/bench_worker.py's "mace-small" (MACE-MP-0 small hyperparameters,
# random init, seed 0, Cu), the float32 one built in float32 as the benchmark does (so its weights
# differ from the float64 one). MACE's wrapper pickles its MACE_ALLOW_CPU setting at export time:
# without it the model refuses to run under KOKKOS on a CPU; exported here with it set.
#
# Running an export (both peers need the KOKKOS variant: they use forward/reverse_exchange,
# eatoms and update_pair_forces_gpu, which only mliap/kk's data object has):
#   . "$(cat .venv/facet-lammps-prefix)/facet-lammps.env"; export PATH=<peer venv>/bin:$PATH
#   [MACE_ALLOW_CPU=true] lmp -k on t 1 -sf kk -in deck   # newton on; pair_style mliap/kk unified FILE 0
#
# Idempotent: a second run checks the environments and the exports and redoes only what is
# missing or stale (PEER_REEXPORT=1 re-exports all). --smoke also runs every export for a few MD
# steps on 108 Cu atoms in the KOKKOS LAMMPS (about half a minute each on one core).
# shellcheck disable=SC1090  # (sources the LAMMPS build's facet-lammps.env)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${FACET_BENCH_CACHE:-$HOME/.cache/facet-bench}
mace_venv=${MACE_VENV:-$cache/mace-venv}
sevenn_venv=${SEVENN_VENV:-$cache/sevenn-venv}
out=${PEER_MODELS:-$cache/peer-models}
py=${FACET_PYTHON:-python3}
torch_version=2.13.0
cueq_version=0.13.0
sevenn_version=0.13.0
smoke=0
for a in "$@"; do
  case $a in
    --smoke) smoke=1 ;;
    -h|--help) sed -n '2,/^# shellcheck/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
  esac
done
log() { echo "[setup_peer_envs] $*"; }

# ------------------------------------------------------------------ the project's LAMMPS build
if [ -n "${FACET_LAMMPS_ENV:-}" ]; then
  lmp_env=$FACET_LAMMPS_ENV
elif [ -f "$repo/.venv/facet-lammps-prefix" ]; then
  lmp_env=$(cat "$repo/.venv/facet-lammps-prefix")/facet-lammps.env
else
  echo "[setup_peer_envs] error: no $repo/.venv/facet-lammps-prefix; run ./setup.sh first" >&2
  exit 1
fi
[ -f "$lmp_env" ] || { echo "[setup_peer_envs] error: $lmp_env missing" >&2; exit 1; }
lmp_prefix=$(cd "$(dirname "$lmp_env")" && pwd)
# the lammps package the project venv uses (installed from the build's wheel)
proj_site=$("$repo/.venv/bin/python" -c \
  'import importlib.util as u, os; print(os.path.dirname(os.path.dirname(u.find_spec("lammps").origin)))')
lmp_version=$("$repo/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("lammps"))')
wheels=("$lmp_prefix"/../build/lammps-"$lmp_version"-*.whl)
lmp_wheel=; [ -f "${wheels[0]}" ] && lmp_wheel=${wheels[0]}

# Install the project's lammps module into venv $1 unless it already has the same one: the
# build's wheel, or (no wheel, or one that differs from what .venv has) a copy of .venv's package.
same_lammps() {
  [ -f "$1/lammps/liblammps.so" ] && cmp -s "$1/lammps/liblammps.so" "$proj_site/lammps/liblammps.so" \
    && cmp -s "$1/lammps/mliap/loader.py" "$proj_site/lammps/mliap/loader.py"
}
install_lammps() {
  local venv=$1 site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  same_lammps "$site" && return 0
  if [ -n "$lmp_wheel" ]; then
    log "installing lammps $lmp_version into $venv from $lmp_wheel"
    "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$lmp_wheel"
    same_lammps "$site" && return 0
  fi
  log "installing lammps $lmp_version into $venv (copy of $proj_site/lammps)"
  "$venv/bin/python" -m pip uninstall -q -y lammps >/dev/null 2>&1 || true
  rm -rf "$site/lammps"
  cp -a "$proj_site/lammps" "$proj_site/lammps-$lmp_version.dist-info" "$site/"
}

# lammps.mliap must import in the venv (with the build's libraries, as lmp's embedded Python has).
check_lammps() {
  (
    . "$lmp_env"
    "$1/bin/python" - <<EOF
import importlib.metadata as md
import lammps, lammps.mliap
from lammps.mliap.mliap_unified_abc import MLIAPUnified
assert md.version("lammps") == "$lmp_version", md.version("lammps")
print(f"lammps {md.version('lammps')} ({lammps.__file__})")
EOF
  )
}

# ------------------------------------------------------------------ MACE venv
MACE_VENV=$mace_venv FACET_BENCH_CACHE=$cache FACET_PYTHON=$py bash "$here/setup_mace_env.sh"
check_mace_cueq() {
  "$mace_venv/bin/python" - <<EOF 2>/dev/null
import importlib.metadata as md
import torch, cuequivariance, cuequivariance_torch
assert torch.__version__.split("+")[0] == "$torch_version", torch.__version__
for d in ("cuequivariance", "cuequivariance-torch"):
    assert md.version(d) == "$cueq_version", (d, md.version(d))
print(f"cuequivariance(-torch) {md.version('cuequivariance-torch')}")
EOF
}
if ! check_mace_cueq >/dev/null; then
  log "adding cuequivariance $cueq_version to $mace_venv"
  echo "torch==$torch_version" > "$mace_venv/constraints.txt"
  "$mace_venv/bin/python" -m pip install -q -c "$mace_venv/constraints.txt" \
    "cuequivariance==$cueq_version" "cuequivariance-torch==$cueq_version"
fi
check_mace_cueq
install_lammps "$mace_venv"
check_lammps "$mace_venv"

# ------------------------------------------------------------------ SevenNet venv
check_sevenn() {
  "$sevenn_venv/bin/python" - <<EOF 2>/dev/null
import importlib.metadata as md
import torch, e3nn, sevenn, torch_geometric
from sevenn.util import pretrained_name_to_path
assert torch.__version__.split("+")[0] == "$torch_version", torch.__version__
assert md.version("sevenn") == "$sevenn_version", md.version("sevenn")
pretrained_name_to_path("7net-0")
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, sevenn {md.version('sevenn')}, "
      f"torch_geometric {torch_geometric.__version__}")
EOF
}
if [ -x "$sevenn_venv/bin/python" ] && check_sevenn >/dev/null; then
  log "SevenNet environment up to date ($sevenn_venv)"
else
  mkdir -p "$cache"
  if [ ! -x "$sevenn_venv/bin/python" ]; then
    log "creating $sevenn_venv"
    "$py" -m venv "$sevenn_venv"
  fi
  echo "torch==$torch_version" > "$sevenn_venv/constraints.txt"
  "$sevenn_venv/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned (the CPU wheel; pip also looks in PIP_FIND_LINKS when set).
  "$sevenn_venv/bin/python" -m pip install -q "torch==$torch_version"
  "$sevenn_venv/bin/python" -m pip install -q -c "$sevenn_venv/constraints.txt" "sevenn==$sevenn_version"
fi
if ! check_sevenn; then
  echo "[setup_peer_envs] error: $sevenn_venv does not import torch $torch_version + sevenn $sevenn_version" >&2
  exit 1
fi
install_lammps "$sevenn_venv"
check_lammps "$sevenn_venv"

# ------------------------------------------------------------------ exports
mkdir -p "$out"
tmp=$(mktemp -d "$out/.export.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
written=()

# stale(): the target is missing, PEER_REEXPORT=1, or it is older than a source
stale() {
  local target=$1; shift
  [ "${PEER_REEXPORT:-0}" = 1 ] && return 0
  [ -s "$target" ] || return 0
  local s; for s in "$@"; do [ "$s" -nt "$target" ] && return 0; done
  return 1
}

# SevenNet-0
target=$out/sevenn-0-mliap.pt
ckpt=$("$sevenn_venv/bin/python" -c 'from sevenn.util import pretrained_name_to_path as p; print(p("7net-0"))')
if stale "$target" "$ckpt"; then
  log "exporting SevenNet-0 -> $target"
  (cd "$tmp"; "$sevenn_venv/bin/sevenn_get_model" 7net-0 -mliap -o sevenn-0-mliap 2>&1 \
     | { grep -v -e "No tensor product accelerator" -e "warn_no_tp_accelerator" || true; })
  [ -s "$tmp/sevenn-0-mliap.pt" ] || { echo "[setup_peer_envs] error: SevenNet export failed" >&2; exit 1; }
  mv "$tmp/sevenn-0-mliap.pt" "$target"
  written+=("$target")
fi

# MACE-small, the benchmark's random-init model of each dtype
models=$cache/mace-models
cat > "$tmp/export_e3nn.py" <<'EOF'
import os, sys
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # e3nn 0.4.4 constants / a full-model pickle
import torch
from mace.calculators.lammps_mliap_mace import LAMMPS_MLIAP_MACE
src, dtype, dst = sys.argv[1:]
model = torch.load(src, map_location="cpu")
model = (model.double() if dtype == "float64" else model.float()).to("cpu")
model.lammps_mliap = True
torch.save(LAMMPS_MLIAP_MACE(model), dst)  # MACE_ALLOW_CPU=true is pickled with it
EOF
for dtype in float64 float32; do
  src=$models/mace-small-cg-$dtype-seed0.model
  if [ ! -s "$src" ]; then
    log "building $src (benchmarks/bench_worker.py mace_calculator)"
    (cd "$here" && FACET_BENCH_MACE_REDUCED_CG=0 "$mace_venv/bin/python" -c \
      "import bench_worker as b; b.mace_calculator('mace-small', '$dtype', 0, '$models')" >/dev/null)
  fi
  # official tool: e3nn -> cuequivariance conversion, LAMMPS_MLIAP_MACE wrapper
  target=$out/mace-small-$dtype-mliap.pt
  if stale "$target" "$src"; then
    log "exporting MACE-small $dtype (cuequivariance) -> $target"
    cp "$src" "$tmp/mace-small-$dtype.model"
    (cd "$tmp"; MACE_ALLOW_CPU=true "$mace_venv/bin/mace_create_lammps_model" \
       "mace-small-$dtype.model" --format mliap --dtype "$dtype" </dev/null 2>&1 \
       | { grep -v -i -e warn -e "torch.load(" -e "torch.tensor(atomic_numbers" || true; })
    [ -s "$tmp/mace-small-$dtype.model-mliap_lammps.pt" ] \
      || { echo "[setup_peer_envs] error: MACE $dtype export failed" >&2; exit 1; }
    mv "$tmp/mace-small-$dtype.model-mliap_lammps.pt" "$target"
    written+=("$target")
  fi
  # same wrapper, plain e3nn (what create_lammps_model does minus run_e3nn_to_cueq)
  target=$out/mace-small-$dtype-e3nn-mliap.pt
  if stale "$target" "$src"; then
    log "exporting MACE-small $dtype (e3nn) -> $target"
    MACE_ALLOW_CPU=true "$mace_venv/bin/python" "$tmp/export_e3nn.py" "$src" "$dtype" "$tmp/e3nn.pt" 2>&1 \
      | { grep -v -i -e warn -e "torch.load(" || true; }
    [ -s "$tmp/e3nn.pt" ] || { echo "[setup_peer_envs] error: MACE $dtype e3nn export failed" >&2; exit 1; }
    mv "$tmp/e3nn.pt" "$target"
    written+=("$target")
  fi
done

# ------------------------------------------------------------------ check the exports load
# (in their venvs, as lmp's embedded Python will; MACE's must carry allow_cpu)
cat > "$tmp/check_exports.py" <<'EOF'
import os, sys
import torch
for f in sys.argv[1:]:
    m = torch.load(f, weights_only=False, map_location="cpu")
    dtype = getattr(m, "dtype", "float32 (edge vectors)")
    cfg = getattr(m, "config", None)
    if cfg is not None and hasattr(cfg, "allow_cpu"):
        assert cfg.allow_cpu or cfg.force_cpu, f"{f}: exported without MACE_ALLOW_CPU=true"
    assert "Cu" in m.element_types, f"{f}: no Cu"
    print(f"  {os.path.basename(f)}: {type(m).__name__}, cutoff {2 * m.rcutfac:g} A, {dtype}")
EOF
check_exports() {  # venv files...
  local venv=$1; shift
  ( . "$lmp_env"; MACE_ALLOW_CPU=true "$venv/bin/python" "$tmp/check_exports.py" "$@" 2>"$tmp/check.err" ) \
    || { grep -v -i warn "$tmp/check.err" >&2; return 1; }
}
log "exports in $out:"
check_exports "$sevenn_venv" "$out/sevenn-0-mliap.pt"
check_exports "$mace_venv" "$out"/mace-small-float{64,32}{,-e3nn}-mliap.pt
if [ ${#written[@]} -gt 0 ]; then
  log "wrote:"; printf '  %s\n' "${written[@]}"
else
  log "exports up to date (nothing written)"
fi

# ------------------------------------------------------------------ optional LAMMPS smoke run
if [ "$smoke" = 1 ]; then
  cat > "$tmp/in.peer" <<'EOF'
units           metal
atom_style      atomic
newton          on
lattice         fcc 3.61
region          box block 0 3 0 3 0 3
create_box      1 box
create_atoms    1 box
mass            1 63.546
pair_style      mliap/kk unified ${model} 0
pair_coeff      * * Cu
velocity        all create 300.0 4928459 loop geom
fix             1 all nve
thermo          1
run             2
EOF
  smoke_run() {  # venv model
    if ( . "$lmp_env"; export PATH="$1/bin:$PATH" OMP_NUM_THREADS=1 MACE_ALLOW_CPU=true
         cd "$tmp" && lmp -k on t 1 -sf kk -in in.peer -var model "$2" -log none -screen smoke.out \
           >/dev/null 2>smoke.err ); then
      log "smoke OK: $(basename "$2"): $(grep 'Loop time' "$tmp/smoke.out")"
    else
      log "smoke FAILED: $2"; tail -5 "$tmp/smoke.err" "$tmp/smoke.out" >&2; return 1
    fi
  }
  smoke_run "$sevenn_venv" "$out/sevenn-0-mliap.pt"
  for f in "$out"/mace-small-float{64,32}{,-e3nn}-mliap.pt; do smoke_run "$mace_venv" "$f"; done
fi
log "ready: $mace_venv, $sevenn_venv; models in $out"
