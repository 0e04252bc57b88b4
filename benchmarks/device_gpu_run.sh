#!/usr/bin/env bash
# One prepared GPU session (H100/H200 machine without network): the GPU path check and the
# model-level GPU benchmark, with everything the machine lacks carried as wheels in .whl/:
#   .whl/facet/   e3nn 0.6.0, ase, vesin                   (Python 3.12 wheels)
#   .whl/mace/    mace-torch 0.3.16, e3nn 0.4.4 and the deps the image lacks
#   .whl/sevenn/  braceexpand + site/ (the sevenn 0.13.0 wheel unpacked, keeping only the
#                 SevenNet-0 11Jul2024 checkpoint, so that the carry stays under 64 MiB)
# The image's python3 provides torch (CUDA), cupy, torch_geometric, scipy, pandas, ...
# Output: $OUT/path_check.log, $OUT/gpu.json, $OUT/env.txt (+ $OUT/kernels.jsonl)
# Knobs: SIZES, MODELS, DTYPES (bench_gpu.py's lists), SKIP_PATH_CHECK=1, WARM_S (seconds of
# matmuls first, so that the GPU leaves its idle clock before anything is timed; default 15),
# KERNEL_SIZES (sizes for gpu_kernel_count.py; empty: skipped).
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
inst() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$@"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  python3 -c "import sys, torch, cupy; print(sys.version.split()[0], torch.__version__, torch.version.cuda, cupy.__version__)"
  # what a LAMMPS KOKKOS-CUDA build on this machine would have to work with
  for t in nvcc g++ gcc cmake make mpicc mpirun python3-config; do
    printf '%s: %s\n' "$t" "$(command -v $t || echo missing)"
  done
  ls -d /usr/local/cuda* 2>/dev/null || echo "no /usr/local/cuda"
  python3 -c "import sysconfig, os; h=sysconfig.get_paths()['include']; print('Python.h:', os.path.exists(h + '/Python.h'), h)"
  nproc
} 2>&1 | tee "$OUT/env.txt"
inst /tmp/site_facet .whl/facet/*.whl || exit 1
inst /tmp/site_mace .whl/mace/*.whl .whl/facet/ase-*.whl || exit 1
inst /tmp/site_sevenn .whl/sevenn/*.whl .whl/facet/ase-*.whl .whl/facet/e3nn-*.whl \
  .whl/mace/matscipy-*.whl || exit 1

echo "== warming the GPU up (${WARM_S:-15} s of matmuls)"
python3 - <<PY
import time, torch
a = torch.randn(8192, 8192, device="cuda")
t = time.time()
while time.time() - t < ${WARM_S:-15}:
    a = (a @ a).clamp_(-1, 1)
torch.cuda.synchronize()
PY
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/env.txt"

if [ "${SKIP_PATH_CHECK:-0}" != 1 ]; then
  echo "== GPU path check (FacetMLIAP plain + exchange paths, host/GPU arrays, cpu/cuda model)"
  PYTHONPATH=/tmp/site_facet timeout 150 python3 scripts/gpu_path_check.py 2>&1 \
    | tee "$OUT/path_check.log"
fi

if [ -n "${KERNEL_SIZES:-}" ]; then
  echo "== operators and kernels per Facet-S call"
  PYTHONPATH=/tmp/site_facet timeout 120 python3 benchmarks/gpu_kernel_count.py --device cuda \
    --sizes "$KERNEL_SIZES" 2>&1 | grep '^{' | tee "$OUT/kernels.jsonl"
fi

echo "== model-level benchmark"
PYTHONPATH=/tmp/site_facet timeout ${BENCH_TIMEOUT:-330} python3 benchmarks/bench_gpu.py \
  --device cuda --sizes "${SIZES:-108,500,2048,8000,32000}" --budget 1.0 --timeout 150 \
  --models "${MODELS:-facet,mace-small,sevenn-0}" --dtypes "${DTYPES:-float32,float64}" \
  --site facet=/tmp/site_facet --site mace-small=/tmp/site_mace \
  --site sevenn-0=/tmp/site_sevenn:.whl/sevenn/site --out "$OUT/gpu.json" 2>&1 \
  | tee "$OUT/bench.log" | grep -v '^{'
