"""Probe LAMMPS' KOKKOS ML-IAP exchange directly: run under ``mpirun -np N`` with a tiny
periodic cell so that atoms are their own ghosts, and check on every rank that

- forward_exchange: every ghost row equals the row of its owner (atom ids as features),
- reverse_exchange: every owner row receives the sum of its ghost rows, ghosts are zeroed.

Prints "EXCHANGE OK <nchecks>" on success; raises (non-zero exit) otherwise.
"""

from __future__ import annotations

import lammps
import lammps.mliap
import numpy as np
import torch
from lammps.mliap.mliap_unified_abc import MLIAPUnified
from mpi4py import MPI


class ExchangeProbe(MLIAPUnified):
    def __init__(self, lmp):
        super().__init__(None, ["Cu"], 1, 1, 1.5)  # cutoff 3 Å
        self.lmp = lmp
        self.checks = 0

    def compute_descriptors(self, data):
        pass

    def compute_gradients(self, data):
        pass

    def compute_forces(self, data):
        nlocal, ntotal = data.nlocal, data.ntotal
        ids_ptr = self.lmp.extract_atom("id")
        ids = np.array([ids_ptr[k] for k in range(ntotal)], dtype=np.float64)
        width = 5
        feat = np.zeros((ntotal, width))
        feat[:nlocal] = ids[:nlocal, None] * np.arange(1, width + 1)
        for dtype in (torch.float64, torch.float32):
            src = torch.tensor(feat, dtype=dtype)
            dst = torch.empty_like(src)
            data.forward_exchange(src, dst, width)
            expect = torch.tensor(ids[:, None] * np.arange(1, width + 1), dtype=dtype)
            assert torch.equal(dst, expect), "forward_exchange: ghost rows differ from owners"
            ones = torch.ones(ntotal, width, dtype=dtype)
            summed = torch.empty_like(ones)
            data.reverse_exchange(ones, summed, width)
            local_ids = ids[:nlocal]
            # ghosts of this rank whose owners are local here (periodic self-images)
            copies = np.array([(ids[nlocal:] == i).sum() for i in local_ids], dtype=float)
            assert torch.all(summed[nlocal:] == 0), "reverse_exchange did not zero ghosts"
            got = summed[:nlocal, 0].double().numpy()
            if MPI.COMM_WORLD.Get_size() == 1:
                assert np.array_equal(got, 1 + copies), (got, copies)
            else:  # owners also receive from other ranks' ghosts: at least own copies
                assert np.all(got >= 1 + copies), (got, copies)
            total = MPI.COMM_WORLD.allreduce(float(got.sum()))
            assert total == MPI.COMM_WORLD.allreduce(float(ntotal)), "ghost sum lost rows"
            self.checks += 1
        data.energy = 0.0


def main():
    comm = MPI.COMM_WORLD
    lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none", "-k", "on",
                                 "t", "1", "-sf", "kk"], comm=comm)
    lammps.mliap.activate_mliappy(lmp)
    lammps.mliap.activate_mliappy_kokkos(lmp)
    probe = ExchangeProbe(lmp)
    lammps.mliap.load_unified_kokkos(probe)
    lmp.commands_list([
        "units metal", "atom_style atomic", "atom_modify map yes", "newton on",
        "lattice fcc 3.6", "region box block 0 1 0 1 0 2", "create_box 1 box",
        "create_atoms 1 box", "mass 1 63.5",
        "pair_style mliap unified EXISTS 0", "pair_coeff * * Cu", "run 0",
    ])
    checks = comm.allreduce(probe.checks)
    if comm.Get_rank() == 0:
        print(f"EXCHANGE OK {checks}", flush=True)
    lmp.close()


if __name__ == "__main__":
    main()
