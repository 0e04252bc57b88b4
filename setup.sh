#!/usr/bin/env bash
# One command from a fresh machine to a relaxed crystal:
#   1. Python environment (.venv): torch (CPU, pinned), e3nn, ase, vesin, mpi4py on MPICH
#   2. LAMMPS with ML-IAP + Python (+ KOKKOS), built once and cached outside the repo, and the
#      native plugin `pair_style facet` (C++, libtorch) against it, cached the same way
#   3. the shipped Facet model frozen for LAMMPS (facet-deploy)
#   4. the main job: a LAMMPS crystal relaxation (minimize + fix box/relax) on 2 MPI ranks
# Re-runs take seconds. Set FACET_SKIP_MAIN_JOB=1 to stop after step 3.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$repo"
bash deploy/setup_env.sh
bash deploy/build_lammps.sh
bash deploy/build_plugin.sh
# shellcheck disable=SC1091
source "$(cat .venv/facet-lammps-prefix)/facet-lammps.env"
export PATH="$repo/.venv/bin:$PATH" OMP_NUM_THREADS=1 OMP_PROC_BIND=false
model=examples/models/facet-emt-small.pt
deployed=examples/models/facet-emt-small-mliap.pt
if [ ! -f "$deployed" ] || [ "$deployed" -ot "$model" ]; then
  facet-deploy "$model" -o "$deployed"
fi
if [ "${FACET_SKIP_MAIN_JOB:-0}" != 1 ]; then
  echo "== main job: relaxing a Cu3Au crystal with Facet in LAMMPS on 2 MPI ranks =="
  (cd examples/relax && mpirun -np 2 lmp -in in.relax -var model "$repo/$deployed" -log log.relax)
fi
