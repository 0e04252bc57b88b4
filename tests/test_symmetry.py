"""Invariance of E and equivariance of forces and stress under E(3) and permutations.

The S2-grid MLP is equivariant only up to grid aliasing (see FACET_MODEL.md): exact checks use the
identity grid MLP or a fine grid; the default grid is checked against the bounds of
``facet.symmetry`` (more on the grids in test_s2_grids.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import randomized_model, triclinic_alloy
from scipy.spatial.transform import Rotation

import facet
from facet.calculator import FacetCalculator
from facet.symmetry import ENERGY_BOUND, FORCE_BOUND, probe_structure, rotation_error

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "models" / "facet-emt-small.pt"


def efs(model, atoms: Atoms):
    a = atoms.copy()
    a.calc = FacetCalculator(model)
    return a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=False)


def transformed(atoms: Atoms, q: np.ndarray) -> Atoms:
    a = atoms.copy()
    a.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    a.positions = atoms.positions @ q.T
    return a


def orthogonal_matrices(seed=3):
    rot = Rotation.random(random_state=seed).as_matrix()
    mirror = np.diag([1.0, -1.0, 1.0])
    return {"rotation": rot, "reflection": rot @ mirror, "inversion": -np.eye(3)}


def max_o3_errors(model, atoms):
    e0, f0, s0 = efs(model, atoms)
    errs = []
    for q in orthogonal_matrices().values():
        e, f, s = efs(model, transformed(atoms, q))
        errs.append(
            (abs(e - e0) / len(atoms), np.abs(f - f0 @ q.T).max(), np.abs(s - q @ s0 @ q.T).max())
        )
    return np.max(np.array(errs), axis=0)


@pytest.mark.parametrize("grid", ["identity-mlp", "fine-grid"])
def test_exact_o3_equivariance(grid):
    kw = ({"s2_identity": True} if grid == "identity-mlp"
          else {"s2_grid": "soft", "s2_res": (60, 59)})
    model = randomized_model(facet.facet_tiny(["Cu", "Au"], **kw))
    de, df, ds = max_o3_errors(model, triclinic_alloy())
    tol = 1e-10 if grid == "identity-mlp" else 1e-7
    assert de < tol and df < tol and ds < tol, (de, df, ds)


def test_default_grid_equivariance_bound(tiny_model, alloy):
    """Aliasing of the pointwise MLP on the default grid: bounded, and far below model errors."""
    de, df, ds = max_o3_errors(tiny_model, alloy)
    print(f"default-grid O(3) error: E {de:.2e} eV/atom, F {df:.2e} eV/Å, stress {ds:.2e} eV/Å^3")
    assert de < ENERGY_BOUND and df < FORCE_BOUND and ds < 1e-4


@pytest.mark.parametrize("kind", ["bulk", "slab"])
def test_shipped_model_rotation_error_within_bound(kind):
    """The shipped model at its shipped settings, rattled (0.1 and 0.15 Å) multi-element cells
    of its own elements: rotations, inversion and a reflection within the bounds."""
    model = facet.load_model(SHIPPED, dtype=torch.float64)
    elements = list(model.config.elements)
    worst = [0.0, 0.0]
    for rattle in (0.1, 0.15):
        for seed in range(3):
            atoms = probe_structure(elements, kind, seed=seed, rattle=rattle)
            de, df = rotation_error(model, atoms, seed=seed)
            worst = [max(worst[0], de), max(worst[1], df)]
    print(f"shipped model ({model.config.s2_grid} {model.config.s2_res}), {kind}: "
          f"{worst[0]:.1e} eV/atom, {worst[1]:.1e} eV/Å")
    assert worst[0] <= ENERGY_BOUND and worst[1] <= FORCE_BOUND


def test_translation_invariance(tiny_model, alloy):
    e0, f0, s0 = efs(tiny_model, alloy)
    a = alloy.copy()
    a.positions += np.array([1.3, -7.1, 0.4])
    e, f, s = efs(tiny_model, a)
    assert abs(e - e0) < 1e-10 and np.abs(f - f0).max() < 1e-10 and np.abs(s - s0).max() < 1e-10
    # wrapping atoms back into the cell is a pure relabelling of images
    a.wrap()
    e, f, _ = efs(tiny_model, a)
    assert abs(e - e0) < 1e-10 and np.abs(f - f0).max() < 1e-10


def test_permutation_invariance(tiny_model, alloy):
    e0, f0, s0 = efs(tiny_model, alloy)
    perm = np.random.default_rng(7).permutation(len(alloy))
    e, f, s = efs(tiny_model, alloy[perm])
    assert abs(e - e0) < 1e-10
    assert np.abs(f - f0[perm]).max() < 1e-10
    assert np.abs(s - s0).max() < 1e-10


def test_supercell_extensivity(tiny_model, alloy):
    """A periodic 2x1x1 supercell has exactly twice the energy and the same stress."""
    e0, f0, s0 = efs(tiny_model, alloy)
    e, f, s = efs(tiny_model, alloy.repeat((2, 1, 1)))
    assert abs(e - 2 * e0) < 1e-9
    assert np.abs(f[: len(alloy)] - f0).max() < 1e-10
    assert np.abs(s - s0).max() < 1e-10
