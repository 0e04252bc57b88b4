"""``facet-deploy --check``: run a deployed object on a small structure and compare with ASE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from facet.calculator import FacetCalculator
from facet.checkpoint import load_model


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


def check_deployed(checkpoint: str | Path, deployed: str | Path) -> bool:
    obj = torch.load(deployed, map_location="cpu", weights_only=False)
    atoms = check_structure(obj.element_types)
    ref = atoms.copy()
    ref.calc = FacetCalculator(load_model(checkpoint, dtype=getattr(torch, obj.dtype_name)),
                               dtype=obj.dtype_name)
    e_ref, f_ref, s_ref = ref.get_potential_energy(), ref.get_forces(), ref.get_stress()
    try:
        from facet.lammps_driver import FacetLammps

        with FacetLammps(obj) as runner:
            res = runner.evaluate(atoms)
        where = "LAMMPS run 0"
    except ImportError:
        print("check: the lammps Python module is not installed; checking the frozen module "
              "through the ASE calculator only")
        frozen = atoms.copy()
        frozen.calc = FacetCalculator(load_model(checkpoint, dtype=torch.float64), script=True)
        res = {"energy": frozen.get_potential_energy(), "forces": frozen.get_forces(),
               "stress": frozen.get_stress()}
        where = "TorchScript"
    de = abs(res["energy"] - e_ref) / len(atoms)
    df = np.abs(res["forces"] - f_ref).max()
    ds = np.abs(res["stress"] - s_ref).max()
    tol = (1e-8, 1e-6, 1e-6) if obj.dtype_name == "float64" else (1e-5, 1e-3, 1e-4)
    ok = de <= tol[0] and df <= tol[1] and ds <= tol[2]
    print(f"check ({where} vs ASE, {len(atoms)} atoms, {obj.dtype_name}): "
          f"|dE|/atom {de:.2e} eV, max|dF| {df:.2e} eV/Å, max|dstress| {ds:.2e} eV/Å^3 -> "
          f"{'OK' if ok else 'MISMATCH'}")
    return ok
