#!/usr/bin/env bash
# Create the project's Python environment (default: .venv at the repo root) with
# everything Facet needs: torch (pinned CPU build), e3nn, ase, vesin, mpi4py built
# against the machine's MPICH, Cython (for LAMMPS' ML-IAP Python coupling), and dev tools.
# Idempotent: a second run only checks. Override the location with FACET_VENV=/path.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${FACET_VENV:-$here/.venv}
py=${FACET_PYTHON:-python3}

need_pkgs=()
command -v mpicc >/dev/null || need_pkgs+=(mpich libmpich-dev)
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v g++ >/dev/null || need_pkgs+=(build-essential)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "[setup_env] installing system packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    build-essential cmake mpich libmpich-dev >/dev/null
fi

# LAMMPS embeds libpython: the interpreter must be a shared-libpython build.
if [ "$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED"))')" != "1" ]; then
  echo "[setup_env] error: $py is not a shared-libpython build; LAMMPS' PYTHON package needs one." >&2
  echo "            Point FACET_PYTHON at a Python built with --enable-shared." >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup_env] creating $venv"
  "$py" -m venv "$venv"
fi
pip="$venv/bin/python -m pip"
stamp="$venv/.facet-env-ok"
if [ -f "$stamp" ] && [ "$stamp" -nt "$here/pyproject.toml" ]; then
  echo "[setup_env] environment up to date ($venv)"
  exit 0
fi
$pip install -q --upgrade pip
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$pip install -q "torch==2.13.0"
$pip install -q numpy cython
if ! "$venv/bin/python" -c "import mpi4py" 2>/dev/null; then
  MPICC=mpicc $pip install -q --no-binary mpi4py --no-cache-dir mpi4py
fi
$pip install -q -e "${here}[dev]"
touch "$stamp"
echo "[setup_env] ready: $venv"
