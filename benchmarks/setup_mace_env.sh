#!/usr/bin/env bash
# Create the separate Python environment the MACE side of the benchmark runs in.
#
# mace-torch pins an older e3nn (0.4.4) than Facet needs (>= 0.5.6), so it cannot share the
# project venv. Default location: ${FACET_BENCH_CACHE:-$HOME/.cache/facet-bench}/mace-venv
# (override with MACE_VENV=/path). Python: ${FACET_PYTHON:-python3}.
#
# torch is installed FIRST and pinned (2.13.0, the CPU build; an unpinned torch pulls a multi-GB
# CUDA build), then mace-torch under a constraints file that keeps torch at 2.13.0.
# Idempotent: a second run only checks that the environment imports.
set -euo pipefail
cache=${FACET_BENCH_CACHE:-$HOME/.cache/facet-bench}
venv=${MACE_VENV:-$cache/mace-venv}
py=${FACET_PYTHON:-python3}
torch_version=2.13.0
mace_version=0.3.16

check() {
  "$venv/bin/python" - <<EOF 2>/dev/null
import torch, mace, e3nn
from e3nn import o3
from mace.modules import ScaleShiftMACE
from mace.calculators import MACECalculator
assert torch.__version__.split("+")[0] == "$torch_version", torch.__version__
import importlib.metadata as md
assert md.version("mace-torch") == "$mace_version", md.version("mace-torch")
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, mace-torch {md.version('mace-torch')}")
EOF
}

if [ -x "$venv/bin/python" ] && check; then
  echo "[setup_mace_env] environment up to date ($venv)"
  exit 0
fi

mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup_mace_env] creating $venv"
  "$py" -m venv "$venv"
fi
pip="$venv/bin/python -m pip"
constraints="$venv/constraints.txt"
echo "torch==$torch_version" > "$constraints"

$pip install -q --upgrade pip
# torch first and pinned (the CPU wheel; pip also looks in PIP_FIND_LINKS when set).
$pip install -q "torch==$torch_version"
$pip install -q -c "$constraints" "mace-torch==$mace_version"

if ! check; then
  echo "[setup_mace_env] error: $venv does not import torch $torch_version + mace-torch $mace_version" >&2
  exit 1
fi
echo "[setup_mace_env] ready: $venv"
