"""A job for the no-hang tests: run Facet in LAMMPS on ``mpirun -np 2`` with a failure
injected on rank 1 only, and print what each rank saw.

    mpirun -np 2 python fail_job.py MODEL STRUCTURE.xyz {config|evaluate} [--no-comm] [--kokkos]

- ``config``: rank 1 reports a configuration problem. With LAMMPS' communicator known (the
  default, as ``FacetLammps`` sets it) every rank must raise the same error, so each prints
  ``CAUGHT rank <r>: <message>`` and the job exits 0; with ``--no-comm`` (as under the `lmp`
  executable) the job must abort with the message instead of hanging.
- ``evaluate``: rank 1 fails inside the evaluation (after the ranks agreed all is well): the job
  must abort with the message instead of hanging in the next halo exchange or reduction.
"""

from __future__ import annotations

import argparse

import ase.io
from mpi4py import MPI

from facet.lammps.driver import FacetLammps
from facet.lammps.mliap import FacetMLIAP

RANK = MPI.COMM_WORLD.Get_rank()


class FailingMLIAP(FacetMLIAP):
    mode = ""

    def _configuration_problem(self, data):
        problem = super()._configuration_problem(data)
        if self.mode == "config" and RANK == 1:
            return "injected configuration problem on rank 1"
        return problem

    def _compute_plain(self, data):
        if self.mode == "evaluate" and RANK == 1:
            raise RuntimeError("injected evaluation failure on rank 1")
        super()._compute_plain(data)

    def _compute_exchange(self, data):
        if self.mode == "evaluate" and RANK == 1:
            raise RuntimeError("injected evaluation failure on rank 1")
        super()._compute_exchange(data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("structure")
    p.add_argument("mode", choices=["config", "evaluate"])
    p.add_argument("--no-comm", action="store_true")
    p.add_argument("--kokkos", action="store_true")
    args = p.parse_args()
    atoms = ase.io.read(args.structure)
    obj = FacetMLIAP.from_checkpoint(args.model) if RANK == 0 else None
    obj = MPI.COMM_WORLD.bcast(obj, root=0)
    obj.__class__ = FailingMLIAP
    obj.mode = args.mode
    with FacetLammps(obj, kokkos=args.kokkos) as runner:
        if args.no_comm:
            runner.mliap.comm = None
        try:
            runner.evaluate(atoms)
        except Exception as exc:
            print(f"CAUGHT rank {RANK}: {exc}", flush=True)
            return
    print(f"FINISHED rank {RANK}", flush=True)


if __name__ == "__main__":
    main()
