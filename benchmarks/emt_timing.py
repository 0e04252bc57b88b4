"""Inference time per atom of any ASE calculator on fixed EMT-like structures (shared by the
Facet and MACE sides of ``bench_facet_vs_mace.py``; needs only ASE and numpy).

Structures: random Cu-Pd-Au fcc alloys (Vegard lattice constant, rattled 0.05 Å, seed 0) of
108 atoms (3x3x3 conventional cells, the main job's size) and 500 atoms (5x5x5). One call =
``calc.calculate(atoms, ["energy", "forces"], all_changes)``; one warm-up call, then
``repeats`` timed calls; the median wall and CPU (process) time per call, divided by the atoms.
On a loaded machine read the CPU column: it does not count waiting for a core.
"""

from __future__ import annotations

import time

import numpy as np
from ase.build import bulk
from ase.calculators.calculator import all_changes

LATTICE = {"Cu": 3.59, "Pd": 3.88, "Au": 4.055}


def structure(n_rep: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=1.0, cubic=True).repeat((n_rep,) * 3)
    symbols = rng.choice(["Cu", "Pd", "Au"], size=len(atoms))
    atoms.set_chemical_symbols(list(symbols))
    a = float(np.mean([LATTICE[s] for s in symbols]))
    atoms.set_cell(atoms.cell.array * a, scale_atoms=True)
    atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def time_per_atom(calc, sizes=(3, 5), repeats: int = 5) -> dict[str, dict[str, float]]:
    out = {}
    for n_rep in sizes:
        atoms = structure(n_rep)
        atoms.calc = calc
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        walls, cpus = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            calc.calculate(atoms, ["energy", "forces"], all_changes)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        n = len(atoms)
        out[str(n)] = {
            "atoms": n,
            "wall_s_per_call": float(np.median(walls)),
            "cpu_s_per_call": float(np.median(cpus)),
            "wall_us_per_atom": 1e6 * float(np.median(walls)) / n,
            "cpu_us_per_atom": 1e6 * float(np.median(cpus)) / n,
        }
    return out
