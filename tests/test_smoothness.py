"""Energy and forces are continuous (C^2 envelope) as a neighbour crosses the cutoff."""

from __future__ import annotations

import numpy as np
from ase import Atoms

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
