"""A job for the parity tests: run Facet in LAMMPS through facet.lammps.driver on
``mpirun -np N`` ranks and write the results (rank 0) as JSON.

    mpirun -np 2 python run_driver.py MODEL STRUCTURE.xyz OUT.json [--task eval|nve|relax]
"""

from __future__ import annotations

import argparse
import json

import ase.io
import numpy as np

from facet.lammps.driver import FacetLammps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("structure")
    p.add_argument("out")
    p.add_argument("--task", choices=["eval", "nve", "relax"], default="eval")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--kokkos", action="store_true")
    args = p.parse_args()
    atoms = ase.io.read(args.structure)
    with FacetLammps(args.model, kokkos=args.kokkos) as runner:
        if args.task == "eval":
            res = runner.evaluate(atoms)
            here = runner.current_atoms(atoms)  # LAMMPS' own positions, full precision
            res.update(lammps_positions=here.positions, lammps_cell=here.cell.array)
        elif args.task == "nve":
            runner.load_atoms(atoms)
            runner.lmp.commands_list([
                "velocity all create 600.0 4928459 mom yes rot no dist gaussian",
                "fix nve all nve",
                "timestep 0.001",
                f"run {args.steps}",
            ])
            res = {"positions": runner._gather("x", 3), "velocities": runner._gather("v", 3),
                   "energy": float(runner.lmp.get_thermo("pe"))}
        else:
            relaxed, energy = runner.relax(atoms, fmax=1e-5)
            res = {"cellpar": relaxed.cell.cellpar(), "energy": energy,
                   "volume": relaxed.get_volume(), "stress": runner.results()["stress"],
                   "cell": relaxed.cell.array}
        counts = runner.comm.gather(runner.mliap.atom_counts, root=0)
        evaluations = runner.comm.gather(runner.mliap.evaluation, root=0)
        if runner.rank == 0:
            out = {k: np.asarray(v).tolist() for k, v in res.items()}
            out["path"] = runner.mliap.path
            out["atom_counts"] = counts
            out["evaluations"] = evaluations
            with open(args.out, "w") as fh:
                json.dump(out, fh)


if __name__ == "__main__":
    main()
