"""Relax an ASE structure with Facet in LAMMPS, driven from Python on N MPI ranks.

    mpirun -np 2 python relax_mpi.py [../models/facet-emt-small.pt]

The model is loaded in-process (pair_style mliap unified EXISTS 1); with a CUDA deployment each
rank takes the GPU of its node-local rank. Results are the same on every rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ase.build import bulk
from mpi4py import MPI

from facet.lammps.driver import FacetLammps

here = Path(__file__).resolve().parent
model = sys.argv[1] if len(sys.argv) > 1 else str(here.parent / "models" / "facet-emt-small.pt")

atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 2))
atoms.symbols[::4] = "Pd"
atoms.rattle(0.03, seed=1)

with FacetLammps(model) as runner:
    before = runner.evaluate(atoms)
    relaxed, energy = runner.relax(atoms, fmax=1e-3, max_iter=100)

if MPI.COMM_WORLD.Get_rank() == 0:
    n = len(atoms)
    print(f"ranks: {MPI.COMM_WORLD.Get_size()}, atoms: {n}")
    print(f"before: {before['energy'] / n:.6f} eV/atom, max |F| "
          f"{abs(before['forces']).max():.4f} eV/Å")
    print(f"after:  {energy / n:.6f} eV/atom, cell {relaxed.cell.cellpar().round(4)}")
