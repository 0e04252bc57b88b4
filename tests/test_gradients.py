"""Forces = -dE/dx and stress = (1/V) dE/dstrain, against central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import triclinic_alloy

from facet.calculator import FacetCalculator


def energy(model, atoms):
    a = atoms.copy()
    a.calc = FacetCalculator(model)
    return a.get_potential_energy()


def test_forces_match_finite_differences(tiny_model, alloy):
    a = alloy.copy()
    a.calc = FacetCalculator(tiny_model)
    forces = a.get_forces()
    h = 1e-4
    rng = np.random.default_rng(0)
    for k in rng.choice(len(alloy), size=4, replace=False):
        for c in range(3):
            plus, minus = alloy.copy(), alloy.copy()
            plus.positions[k, c] += h
            minus.positions[k, c] -= h
            fd = -(energy(tiny_model, plus) - energy(tiny_model, minus)) / (2 * h)
            assert forces[k, c] == pytest.approx(fd, abs=1e-7), (k, c)


@pytest.mark.parametrize("seed", [0, 1])
def test_stress_matches_strain_derivative(tiny_model, seed):
    """Triclinic cell: sigma_ab = (1/V) dE/d(eps_ab), atoms and cell strained together."""
    atoms = triclinic_alloy(seed=seed)
    a = atoms.copy()
    a.calc = FacetCalculator(tiny_model)
    stress = a.get_stress(voigt=False)
    h = 1e-5
    fd = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1, -1):
                eps = np.eye(3)
                eps[i, j] += sign * h
                s = atoms.copy()
                s.set_cell(atoms.cell.array @ eps.T, scale_atoms=True)
                energies.append(energy(tiny_model, s))
            fd[i, j] = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    # fd[a, b] = (1/V) sum g_a r_b; the reported stress takes the upper triangle of
    # (1/V) sum r_a g_b (LAMMPS' convention): compare exactly that, no symmetrising
    expected = np.triu(fd.T) + np.triu(fd.T, 1).T
    np.testing.assert_allclose(stress, expected, atol=1e-8)


def test_virial_is_symmetric(tiny_model, alloy):
    """Rotation invariance makes sum r_ij (x) dE/dr_ij symmetric (checked before symmetrising)."""
    import torch

    from facet.contract import FacetPotential, virial_from_pair_gradients
    from facet.graph import build_graph

    g = build_graph(alloy, ["Cu", "Au"], tiny_model.r_max)
    rij = torch.tensor(g.rij)
    _, grad = FacetPotential(tiny_model)(
        torch.tensor(g.species), torch.tensor(g.centre), torch.tensor(g.neighbour), rij, len(alloy)
    )
    w = virial_from_pair_gradients(rij, grad).numpy()
    # exact up to the S2 grid aliasing of the tiny model's coarse grid
    assert np.abs(w - w.T).max() < 1e-4 * np.abs(w).max()
