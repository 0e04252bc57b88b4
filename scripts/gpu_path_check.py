"""Check Facet's GPU code paths on a machine with a GPU but without a LAMMPS GPU build.

What runs for real: the deployed ``FacetMLIAP`` object (as ``facet-deploy --device cuda`` builds
it, TorchScript loaded on the GPU), both of its paths (``_compute_plain`` with a deep ghost shell
and ``_compute_exchange`` with per-layer halo exchange), and ``FacetCalculator(device="cuda")``.
What stands in for LAMMPS: ``DataStandIn``, a small object with the attributes of LAMMPS' ML-IAP
data (``mliap_unified_couple_kokkos.pyx``): on a GPU its arrays are CuPy arrays (as a KOKKOS CUDA
build hands them over), ``eatoms`` is a read-only device view, ``update_pair_forces`` receives a
device tensor, and ``forward_exchange``/``reverse_exchange`` copy ghost rows from / sum them into
their owners on the device. Ghost atoms are the periodic images of a small triclinic Cu/Au cell.
The LAMMPS coupling itself is tested on the CPU KOKKOS build (tests/test_kokkos_bridge.py); this
script checks the device side of our code: DLPack ingestion, device placement, dtypes, the
exchange autograd on CUDA tensors.

Reference: ``FacetCalculator`` on the CPU in float64. Prints one line per check and
``GPU PATH CHECK OK`` when energies agree to 1e-8 eV/atom and forces to 1e-6 eV/Å.

    python scripts/gpu_path_check.py            # cuda when available, else the CPU (numpy)
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile

import numpy as np
import torch
from ase.build import bulk
from vesin import NeighborList

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import facet  # noqa: E402
from facet.calculator import FacetCalculator  # noqa: E402
from facet.checkpoint import save_model  # noqa: E402
from facet.lammps.deck import recommended_comm_cutoff  # noqa: E402
from facet.lammps.mliap import FacetMLIAP  # noqa: E402


class DataStandIn:
    """The ML-IAP data of one rank holding every atom of a periodic cell, ghosts = images
    within ``ghost_cut`` Å. ``ghostneigh``: also list the pairs of ghost atoms (plain path)."""

    def __init__(self, atoms, elements, r_max, ghost_cut, ghostneigh, xp):
        pos = atoms.get_positions()
        cell = atoms.cell.array
        n = len(atoms)
        nl = NeighborList(cutoff=float(ghost_cut), full_list=True)
        i, j, shift = nl.compute(points=pos, box=cell, periodic=True, quantities="ijS")
        # ghost atoms: every image (j, S != 0) within ghost_cut of a local atom
        images = {(0, 0, 0, k): k for k in range(n)}
        owner = list(range(n))
        gpos = list(pos)
        for a, s in zip(j, shift, strict=True):
            key = (*map(int, s), int(a))
            if key not in images:
                images[key] = len(owner)
                owner.append(int(a))
                gpos.append(pos[a] + s @ cell)
        ntotal = len(owner)
        gpos = np.asarray(gpos)
        species = facet.graph.species_indices(atoms.get_chemical_symbols(), elements)
        centres = range(ntotal) if ghostneigh else range(n)
        # full pair list within r_max for the listed centres, over all atoms (local + ghost)
        nl_all = NeighborList(cutoff=float(r_max), full_list=True)
        pi, pj = nl_all.compute(points=gpos, box=np.zeros((3, 3)), periodic=False,
                                quantities="ij")
        keep = np.isin(pi, np.asarray(list(centres)))
        pi, pj = pi[keep], pj[keep]
        order = np.argsort(pi, kind="stable")
        pi, pj = pi[order], pj[order]
        self.nlocal, self.ntotal, self.npairs = n, ntotal, len(pi)
        self.nlistatoms = n
        self.natomneigh = ntotal if ghostneigh else n
        self.owner = np.asarray(owner)
        to = xp.asarray
        self.elems = to(species[self.owner].astype(np.int32))
        self.pair_i = to(pi.astype(np.int32))
        self.pair_j = to(pj.astype(np.int32))
        self.rij = to(np.ascontiguousarray(gpos[pj] - gpos[pi]))
        self.iatoms = to(np.arange(self.natomneigh, dtype=np.int32))
        self._eatoms = xp.zeros(n)
        self.on_gpu = xp is not np
        self.fij = None
        self.energy = 0.0
        self._owner_t: dict[torch.device, torch.Tensor] = {}

    @property
    def eatoms(self):  # read-only, as in the KOKKOS coupling: the model fills the view
        return self._eatoms

    # LAMMPS reads these through raw pointers: a host build takes numpy (or CPU tensors), a GPU
    # build device memory. Anything else would be a crash or garbage there, so it fails here.
    def _lammps_side(self, t, name):
        on_gpu = isinstance(t, torch.Tensor) and t.is_cuda
        if self.on_gpu != on_gpu:
            raise TypeError(f"{name}: LAMMPS arrays are on the {'GPU' if self.on_gpu else 'host'}"
                            f" but got {type(t).__name__} on {'GPU' if on_gpu else 'host'}")

    def update_pair_forces(self, fij):
        self._lammps_side(fij, "update_pair_forces")
        assert fij.dtype in (np.float64, torch.float64) and tuple(fij.shape) == (self.npairs, 3)
        self.fij = torch.as_tensor(fij).detach().clone()

    def _owner(self, device):
        if device not in self._owner_t:
            self._owner_t[device] = torch.as_tensor(self.owner, device=device)
        return self._owner_t[device]

    def forward_exchange(self, copy_from, copy_to, width):
        self._lammps_side(copy_from, "forward_exchange")
        assert copy_from.dtype == copy_to.dtype and copy_from.shape[1] == width
        copy_to.copy_(copy_from[self._owner(copy_from.device)])

    def reverse_exchange(self, copy_from, copy_to, width):
        self._lammps_side(copy_from, "reverse_exchange")
        assert copy_from.dtype == copy_to.dtype and copy_from.shape[1] == width
        copy_to.zero_()
        copy_to.index_add_(0, self._owner(copy_from.device), copy_from)

    def forces(self) -> np.ndarray:
        """Pair forces applied as LAMMPS does (f_i += fij, f_j -= fij), ghosts folded back."""
        fij = self.fij.cpu().double().numpy()
        pi, pj = (np.asarray(_host(a), dtype=np.int64) for a in (self.pair_i, self.pair_j))
        f = np.zeros((self.ntotal, 3))
        np.add.at(f, pi, fij)
        np.add.at(f, pj, -fij)
        folded = np.zeros((self.nlocal, 3))
        np.add.at(folded, self.owner, f)
        return folded


def _host(a):
    return a.get() if hasattr(a, "get") else a


def main() -> int:
    cuda = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (no GPU: numpy arrays)'}")
    rng = np.random.default_rng(0)
    atoms = bulk("Cu", "fcc", a=3.7).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell.array + 0.15 * rng.standard_normal((3, 3)), scale_atoms=True)
    atoms.positions += 0.08 * rng.standard_normal(atoms.positions.shape)
    symbols = np.where(rng.random(len(atoms)) < 0.4, "Au", "Cu")
    atoms.set_chemical_symbols(symbols.tolist())

    cfg = facet.facet_tiny(["Cu", "Au"]) if "--tiny" in sys.argv else facet.facet_s(["Cu", "Au"])
    torch.manual_seed(0)
    model = facet.build_model(cfg, torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.5 + 0.5 * torch.rand_like(p)) if name.endswith("gain") else p.add_(
                0.2 * torch.randn_like(p))
    ref = FacetCalculator(model, dtype="float64")
    atoms.calc = ref
    e_ref, f_ref = atoms.get_potential_energy(), atoms.get_forces()
    n = len(atoms)
    failures = 0

    def report(name, energy, forces, e_tol=1e-8, f_tol=1e-6):
        nonlocal failures
        de = abs(energy - e_ref) / n
        df = float(np.abs(forces - f_ref).max())
        ok = de <= e_tol and df <= f_tol
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:48s} |dE|/atom {de:.2e} eV  max|dF| {df:.2e} eV/Å")

    # the single pass, and the recomputing evaluation forced with chunks of 97 pairs
    evaluations = (("single", 0, None), ("recomp", 97, 0))
    if cuda:
        for label, chunk, single in evaluations:
            gpu = FacetCalculator(model, dtype="float64", device="cuda", chunk_edges=chunk,
                                  single_pass_edges=single)
            gpu.calculate(atoms, ["energy", "forces"])
            report(f"FacetCalculator(device='cuda') {label}", gpu.results["energy"],
                   gpu.results["forces"])

    # LAMMPS' arrays on the host (numpy) or the GPU (CuPy) x the model's device
    sides = [("host", np, "cpu")]
    if cuda:
        import cupy

        sides += [("host", np, "cuda"), ("GPU", cupy, "cuda"), ("GPU", cupy, "cpu")]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "model.pt")
        save_model(model, ckpt)
        for dtype, e_tol, f_tol in (("float64", 1e-8, 1e-6), ("float32", 1e-5, 1e-3)):
            for (lmp_side, xp, model_device), (label, chunk, single) in itertools.product(
                sides, evaluations
            ):
                obj = FacetMLIAP.from_checkpoint(ckpt, dtype=dtype, device=model_device,
                                                 chunk_edges=chunk, single_pass_edges=single)
                layers = cfg.num_interactions
                for path, ghost_cut, ghostneigh in (
                    ("plain", recommended_comm_cutoff(cfg.r_max, layers), True),
                    ("exchange", cfg.r_max + 1.0, False),
                ):
                    data = DataStandIn(atoms, cfg.elements, cfg.r_max, ghost_cut, ghostneigh, xp)
                    obj.compute_forces(data)
                    assert obj.evaluation == ("recomputing" if chunk else "single pass")
                    eatoms = float(_host(data.eatoms).sum())
                    assert abs(eatoms - data.energy) < 1e-9 * max(1.0, abs(data.energy))
                    report(f"{path:8s} {label} {dtype} LAMMPS on {lmp_side:4s} model on "
                           f"{model_device:4s} ({data.ntotal} atoms)", data.energy,
                           data.forces(), e_tol, f_tol)
    print("GPU PATH CHECK OK" if failures == 0 else f"GPU PATH CHECK FAILED ({failures})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
