"""Shared fixtures: small random (non-trivial) Facet models and test structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

import facet


def randomized_model(config: facet.FacetConfig, dtype=torch.float64, seed: int = 0) -> facet.Facet:
    """A model with every parameter perturbed (the ReZero init would make layers inert)."""
    torch.manual_seed(seed)
    model = facet.build_model(config, dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            else:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def triclinic_alloy(seed: int = 0, repeat=(2, 2, 2)) -> Atoms:
    """A rattled, sheared fcc Cu/Au cell (triclinic, two species)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.7).repeat(repeat)
    cell = atoms.cell.array.copy()
    cell += 0.15 * rng.standard_normal((3, 3))
    atoms.set_cell(cell, scale_atoms=True)
    atoms.positions += 0.08 * rng.standard_normal(atoms.positions.shape)
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.random(len(atoms)) < 0.4] = "Au"
    atoms.set_chemical_symbols(symbols.tolist())
    return atoms


def lammps_frame(atoms: Atoms) -> Atoms:
    """``atoms`` rotated so that the cell is lower-triangular (a along x, b in the xy plane), the
    orientation LAMMPS stores. The S2-grid layer is rotation-equivariant only up to grid
    aliasing, so runtimes are compared in one frame."""
    rcell, q = atoms.cell.standard_form()
    out = atoms.copy()
    out.positions = atoms.positions @ q.T
    out.set_cell(rcell, scale_atoms=False)
    return out


@pytest.fixture(scope="session")
def tiny_config() -> facet.FacetConfig:
    return facet.facet_tiny(["Cu", "Au"])


@pytest.fixture(scope="session")
def tiny_model(tiny_config) -> facet.Facet:
    return randomized_model(tiny_config)


@pytest.fixture()
def alloy() -> Atoms:
    return triclinic_alloy()
