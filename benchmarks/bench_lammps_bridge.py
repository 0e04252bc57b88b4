"""Cost of the LAMMPS bridge: MD time per step in LAMMPS vs the frozen module's own time.

For each size, runs `steps` NVE steps through facet.lammps.driver (real LAMMPS, ML-IAP unified)
and reports, per rank: wall time per step, the time spent inside the frozen TorchScript module
(measured by the ML-IAP object itself), the bridge overhead = step - module time (neighbour
lists, pair-list copies, force scatter, MPI), and how many atoms the rank computes features
for compared with its local atoms (the ghost-shell cost of the plain path; the KOKKOS path
computes local atoms only), and the largest peak RSS of a rank so far (run one size per
invocation for a clean per-size number). ``--chunk-edges 0`` forces the single pass.

    mpirun -np 2 python benchmarks/bench_lammps_bridge.py --model examples/models/facet-emt-small.pt
    python benchmarks/bench_lammps_bridge.py --sizes 500,2048,8000 --kokkos
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
from ase.build import bulk
from mpi4py import MPI

from facet.lammps.driver import FacetLammps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="examples/models/facet-emt-small.pt")
    p.add_argument("--sizes", default="500,2048,8000", help="approximate atom counts")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--kokkos", action="store_true")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--chunk-edges", type=int, default=None,
                   help="pairs per chunk of the recomputing evaluation (0: single pass always)")
    p.add_argument("--out", help="JSON file for the results (rank 0)")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rows = []
    with FacetLammps(args.model, kokkos=args.kokkos, dtype=args.dtype) as runner:
        if args.chunk_edges is not None:  # read when the frozen module loads, at the first call
            runner.mliap.chunk_edges = args.chunk_edges
        for target in (int(s) for s in args.sizes.split(",")):
            rep = max(1, round((target / 4) ** (1 / 3)))
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((rep, rep, rep))
            atoms.rattle(0.02, seed=1)
            runner.load_atoms(atoms)
            runner.lmp.commands_list([
                "velocity all create 300.0 12345 mom yes rot no", "fix nve all nve",
                "timestep 0.001", "run 1",  # set-up, first call (TorchScript warm-up)
            ])
            obj = runner.mliap
            obj.model_seconds, obj.calls = 0.0, 0
            comm.Barrier()
            t0 = time.perf_counter()
            runner.lmp.command(f"run {args.steps} pre no post no")
            wall = (time.perf_counter() - t0) / args.steps
            model = obj.model_seconds / max(obj.calls, 1)
            nlocal, ncomputed = obj.atom_counts
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            per_rank = comm.gather((wall, model, nlocal, ncomputed, rss_mb), root=0)
            if comm.Get_rank() == 0:
                w = max(r[0] for r in per_rank)
                m = max(r[1] for r in per_rank)
                row = {
                    "atoms": len(atoms), "ranks": comm.Get_size(),
                    "path": "kokkos" if args.kokkos else "plain",
                    "ms_per_step": 1e3 * w, "module_ms_per_step": 1e3 * m,
                    "bridge_overhead": (w - m) / m,
                    "us_per_atom_step": 1e6 * w / len(atoms),
                    "computed_over_local": [r[3] / max(r[2], 1) for r in per_rank],
                    "evaluation": obj.evaluation,
                    "peak_rss_mb": max(r[4] for r in per_rank),
                }
                rows.append(row)
                print(f"{row['atoms']:6d} atoms, {row['ranks']} rank(s), {row['path']:6s}: "
                      f"{row['ms_per_step']:9.1f} ms/step, module {row['module_ms_per_step']:9.1f}"
                      f" ms, bridge overhead {100 * row['bridge_overhead']:5.1f} %, computed/local "
                      f"atoms {np.round(row['computed_over_local'], 2).tolist()}, "
                      f"{row['evaluation']}, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
            runner.lmp.command("unfix nve")
    if comm.Get_rank() == 0:
        print("command: " + " ".join(sys.argv))
        if args.out:
            with open(args.out, "w") as fh:
                json.dump({"command": " ".join(sys.argv), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
