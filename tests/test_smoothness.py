"""The energy is smooth: continuous across the cutoff (C^2 envelope) and harmonic near symmetric
sites (the layer norm does not amplify features that vanish by symmetry)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from conftest import randomized_model

import facet
from facet.calculator import FacetCalculator


def dimer_efs(model, d):
    a = Atoms("CuAu", positions=[[0, 0, 0], [d, 0.3, -0.2]], pbc=False)
    a.calc = FacetCalculator(model)
    return a.get_potential_energy(), a.get_forces()


def test_continuity_across_cutoff(tiny_model):
    r_max = tiny_model.r_max
    e_far, f_far = dimer_efs(tiny_model, r_max + 1.0)
    assert np.abs(f_far).max() == 0.0
    prev = None
    for delta in (1e-2, 1e-3, 1e-4):
        d = np.sqrt((r_max - delta) ** 2 - 0.13)  # |r| = r_max - delta
        e_in, f_in = dimer_efs(tiny_model, d)
        de, df = abs(e_in - e_far), np.abs(f_in).max()
        if prev is not None:
            # C^2 envelope: E - E_far ~ delta^3, F ~ delta^2
            assert de < prev[0] * 0.05 + 1e-14
            assert df < prev[1] * 0.05 + 1e-14
        prev = (de, df)
    assert prev[0] < 1e-9 and prev[1] < 1e-6


def test_smooth_energy_along_path(tiny_model):
    """No jumps: second differences along a dimer stretch through r_max stay small."""
    r_max = tiny_model.r_max
    ds = np.linspace(r_max - 0.5, r_max + 0.2, 141)
    e = np.array([dimer_efs(tiny_model, np.sqrt(d * d - 0.13))[0] for d in ds])
    second = np.abs(np.diff(e, 2))
    assert second.max() < 1e-3


def stiffness(model, displacements):
    """-F_x / dx of the Au atom of fcc Cu3Au (Oh site: its l > 0 features vanish by symmetry)
    displaced by dx, for each dx (eV/Å^2). A smooth energy gives the same value for all small
    dx (harmonic regime)."""
    a = bulk("Cu", "fcc", a=3.7, cubic=True)
    a.symbols[0] = "Au"
    a = a.repeat((2, 2, 2))
    calc = FacetCalculator(model)
    k = []
    for d in displacements:
        b = a.copy()
        b.positions[0, 0] += d
        b.positions[1, 1] += 0.7 * d
        b.calc = calc
        k.append(-b.get_forces()[0, 0] / d)
    return np.array(k)


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_is_harmonic_near_a_symmetric_site(seed):
    """With the default (joint) layer norm the force is linear in tiny displacements from a
    perfect crystal; the authors' separate l > 0 norm amplifies the vanishing features by up to
    1/sqrt(eps) and the same probe sees the stiffness change with the displacement."""
    dx = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
    k = stiffness(randomized_model(facet.facet_tiny(["Cu", "Au"]), seed=seed), dx)
    assert np.ptp(k) < 1e-3 * max(np.abs(k).max(), 1.0), k
    k_sep = stiffness(
        randomized_model(facet.facet_tiny(["Cu", "Au"], layer_norm="separate"), seed=seed), dx
    )
    assert np.ptp(k_sep) > 1e-1 * max(np.abs(k_sep).max(), 1.0), k_sep
