#!/bin/bash
# SLURM job template: Facet model in LAMMPS on GPUs via KOKKOS (mliap/kk), one GPU per
# MPI rank. Needs a CUDA build (deploy/README.md) and a GPU-aware MPI for more than one rank.
# Usage: sbatch deploy/slurm_gpu.sh in.lammps      (edit the #SBATCH lines for your site)
#SBATCH --job-name=facet-gpu
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
set -euo pipefail

# Load the modules the build used, e.g.:  module load gcc cuda openmpi python
# shellcheck disable=SC1090
source "${FACET_LAMMPS_ENV:?set FACET_LAMMPS_ENV=<install>/facet-lammps.env (printed by build_lammps.sh)}"

export OMP_NUM_THREADS=1 OMP_PROC_BIND=false
# GPU-aware MPI switches, site dependent: Cray MPICH: export MPICH_GPU_SUPPORT_ENABLED=1
# MPICH 4 built with CUDA: MPIR_CVAR_ENABLE_GPU=1 (default); Open MPI built --with-cuda: nothing
deck=${1:-in.lammps}

# --gpus-per-task=1: each rank sees exactly one GPU, hence "g 1".
# (With plain mpirun every rank sees all GPUs: use "-k on g <GPUs per node>" instead.)
# newton on: ML-IAP needs it (mliap/kk requests its full neighbour list itself; "neigh full"
# would require newton off in this LAMMPS).
srun --gpus-per-task=1 lmp -k on g 1 -sf kk -pk kokkos newton on -in "$deck"
