"""Bad input gives a clear error or a stated finite answer, never NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

import facet
from facet.calculator import FacetCalculator


def test_unknown_element_is_a_clear_error(tiny_model):
    a = bulk("Ag", "fcc", a=4.1)
    a.calc = FacetCalculator(tiny_model)
    with pytest.raises(facet.FacetInputError, match=r"\['Ag'\].*does not know.*\['Cu', 'Au'\]"):
        a.get_potential_energy()


def test_empty_structure_has_zero_energy(tiny_model):
    a = Atoms(cell=np.eye(3) * 5, pbc=True)
    a.calc = FacetCalculator(tiny_model)
    assert a.get_potential_energy() == 0.0
    assert a.get_forces().shape == (0, 3)
    np.testing.assert_array_equal(a.get_stress(), np.zeros(6))


def test_isolated_atom_energy_is_its_reference(tiny_model):
    """With no neighbours the energy is finite and depends on the species only."""
    a = Atoms("Au", positions=[[0, 0, 0]])
    a.calc = FacetCalculator(tiny_model)
    e = a.get_potential_energy()
    assert np.isfinite(e)
    np.testing.assert_array_equal(a.get_forces(), np.zeros((1, 3)))
    b = Atoms("Au", positions=[[3.0, -1.0, 2.0]])
    b.calc = FacetCalculator(tiny_model)
    assert b.get_potential_energy() == pytest.approx(e, abs=1e-12)


@pytest.mark.parametrize("d", [0.0, 0.05, 0.0999])
def test_overlapping_atoms_are_rejected(tiny_model, d):
    a = Atoms("CuAu", positions=[[0, 0, 0], [d, 0, 0]])
    a.calc = FacetCalculator(tiny_model)
    with pytest.raises(facet.FacetInputError, match="apart.*minimum distance 0.1"):
        a.get_potential_energy()


def test_close_but_allowed_atoms_are_finite(tiny_model):
    a = Atoms("CuAu", positions=[[0, 0, 0], [0.11, 0, 0]])
    a.calc = FacetCalculator(tiny_model)
    assert np.isfinite(a.get_potential_energy())
    assert np.isfinite(a.get_forces()).all()


def test_periodic_duplicate_atoms_are_rejected(tiny_model):
    """An atom on top of a periodic image of another one (a common wrapping mistake)."""
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a += Atoms("Cu", positions=[a.positions[1] + a.cell[0] - 1e-3])
    a.calc = FacetCalculator(tiny_model)
    with pytest.raises(facet.FacetInputError, match="overlapping"):
        a.get_potential_energy()


def test_stress_needs_periodic_cell(tiny_model):
    a = Atoms("CuAu", positions=[[0, 0, 0], [2.5, 0, 0]])
    a.calc = FacetCalculator(tiny_model)
    with pytest.raises(Exception, match="periodic"):
        a.get_stress()


def test_model_in_another_dtype_is_rebuilt(tiny_model, tmp_path):
    """A float32 module with dtype="float64" is evaluated as the checkpoint rebuilt in float64
    (constants recomputed in float64, weights cast), not with float32-rounded constants."""
    facet.save_model(tiny_model, tmp_path / "m.pt")
    m32 = facet.load_model(tmp_path / "m.pt", dtype=torch.float32)
    a = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2))
    a.rattle(0.05, seed=1)
    b = a.copy()
    a.calc = FacetCalculator(m32, dtype="float64")
    assert a.calc.model is not m32 and next(m32.parameters()).dtype == torch.float32
    # the float64 reference weights, cast to float32 and back, as the copy holds them
    ref = facet.load_model(tmp_path / "m.pt", dtype=torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.float().double())
    b.calc = FacetCalculator(ref)
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-12)


def test_no_nan_for_dense_structure(tiny_model):
    a = bulk("Cu", "fcc", a=2.0).repeat((2, 2, 2))  # very compressed but legal
    a.calc = FacetCalculator(tiny_model)
    assert np.isfinite(a.get_potential_energy()) and np.isfinite(a.get_forces()).all()
    assert torch.isfinite(torch.tensor(a.get_stress())).all()
