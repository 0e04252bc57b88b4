#!/bin/bash
# SLURM job template: Facet model in LAMMPS on CPU nodes, one MPI rank per core.
# Usage: sbatch deploy/slurm_cpu.sh in.lammps      (edit the #SBATCH lines for your site)
#SBATCH --job-name=facet-cpu
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --time=02:00:00
set -euo pipefail

# Load the same modules the build used, e.g.:  module load gcc cmake openmpi python
# Then the environment written by deploy/build_lammps.sh (PATH incl. the venv, LD_LIBRARY_PATH):
# shellcheck disable=SC1090
source "${FACET_LAMMPS_ENV:?set FACET_LAMMPS_ENV=<install>/facet-lammps.env (printed by build_lammps.sh)}"

export OMP_NUM_THREADS=1 OMP_PROC_BIND=false   # one thread per rank (torch and OpenMP)
deck=${1:-in.lammps}

# srun needs an MPI built with Slurm/PMI support; with MPICH's hydra use
#   mpirun -np "$SLURM_NTASKS" lmp -in "$deck"
srun lmp -in "$deck"
