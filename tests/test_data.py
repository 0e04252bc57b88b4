"""Training data: the EMT generator, extxyz reading with configurable keys, clear errors for bad
input (naming file and frame), batching, and batched forces/stress against the ASE calculator."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

import facet
from facet.calculator import FacetCalculator
from facet.data.emt import generate
from facet.train.data import (
    DataError,
    LabelKeys,
    build_graphs,
    collate,
    elements_of,
    read_labelled,
    split_indices,
)
from facet.train.predict import predict
from facet.train.stats import average_num_neighbors, fit_reference_energies

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_frames():
    return generate(seed=0, size="tiny")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_frames):
    path = tmp_path_factory.mktemp("data") / "tiny.xyz"
    ase.io.write(path, tiny_frames, format="extxyz")
    return path


def test_generator_is_deterministic_and_labelled(tiny_frames):
    again = generate(seed=0, size="tiny")
    assert len(again) == len(tiny_frames) > 5
    for a, b in zip(tiny_frames, again, strict=True):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
    other = generate(seed=1, size="tiny")
    assert not np.array_equal(other[0].positions, tiny_frames[0].positions)
    kinds = {f.info["config_type"] for f in tiny_frames}
    assert {"bulk", "alloy", "vacancy", "surface", "md_alloy"} <= kinds
    for f in tiny_frames:
        assert len(f) <= 64
        assert f.get_forces().shape == (len(f), 3)
        # slabs carry no stress label, bulk frames do
        assert ("stress" in f.calc.results) == (f.info["config_type"] != "surface")


def test_read_roundtrip_and_custom_keys(tmp_path, tiny_frames):
    frames = []
    for f in tiny_frames[:3]:
        g = f.copy()
        g.calc = None
        g.info["REF_energy"] = f.get_potential_energy()
        g.arrays["REF_forces"] = f.get_forces()
        g.info["REF_stress"] = f.get_stress(voigt=False)  # 3x3 is accepted too
        frames.append(g)
    path = tmp_path / "custom.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=r"frame 0: no energy label 'energy'"):
        read_labelled(path)
    got = read_labelled(path, LabelKeys("REF_energy", "REF_forces", "REF_stress"))
    assert len(got) == 3
    for g, f in zip(got, tiny_frames[:3], strict=True):
        assert g.energy == pytest.approx(f.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(g.forces, f.get_forces(), atol=1e-7)  # 8 decimals
        np.testing.assert_allclose(g.stress, f.get_stress(), atol=1e-8)
    assert elements_of(got) == sorted(
        {s for f in frames for s in f.get_chemical_symbols()},
        key=lambda s: ase.data.atomic_numbers[s],
    )


def _cu_frames(n=3, forces=True, energy=None):
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.rattle(0.05, seed=k)
        results = {"energy": -1.0 * k if energy is None else energy[k]}
        if forces:
            results["forces"] = np.zeros((len(a), 3))
        a.calc = SinglePointCalculator(a, **results)
        out.append(a)
    return out


def test_missing_forces_is_a_clear_error(tmp_path):
    path = tmp_path / "noforces.xyz"
    ase.io.write(path, _cu_frames(forces=False), format="extxyz")
    with pytest.raises(DataError) as err:
        read_labelled(path, require_forces=True)
    msg = str(err.value)
    assert str(path) in msg and "frame 0" in msg and "forces" in msg and "weight" in msg
    # without a force term the same file is fine
    assert len(read_labelled(path, require_forces=False)) == 3


def test_element_missing_from_model_is_a_clear_error(tmp_path):
    frames = _cu_frames()
    frames[2][1].symbol = "Ni"
    path = tmp_path / "ni.xyz"
    ase.io.write(path, frames, format="extxyz")
    labelled = read_labelled(path)
    with pytest.raises(DataError) as err:
        build_graphs(labelled, ["Cu", "Au"], 4.0)
    msg = str(err.value)
    assert str(path) in msg and "frame 2" in msg and "Ni" in msg


def test_empty_and_missing_file_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.xyz: file is empty"):
        read_labelled(empty)
    with pytest.raises(DataError, match=r"nothere\.xyz: file does not exist"):
        read_labelled(tmp_path / "nothere.xyz")


def test_nan_labels_are_clear_errors(tmp_path):
    path = tmp_path / "nan_e.xyz"
    ase.io.write(path, _cu_frames(energy=[0.0, 1.0, float("nan")]), format="extxyz")
    with pytest.raises(DataError) as err:
        read_labelled(path)
    assert str(path) in str(err.value) and "frame 2" in str(err.value)
    assert "NaN" in str(err.value) and "energy" in str(err.value)

    frames = _cu_frames()
    bad = frames[1].calc.results["forces"].copy()
    bad[3, 1] = np.nan
    frames[1].calc.results["forces"] = bad
    path = tmp_path / "nan_f.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError) as err:
        read_labelled(path)
    msg = str(err.value)
    assert str(path) in msg and "frame 1" in msg and "forces" in msg and "atom 3" in msg


def test_split_is_seeded_and_disjoint():
    tr, va = split_indices(20, 0.25, seed=3)
    assert len(va) == 5 and len(tr) == 15 and not set(tr) & set(va)
    assert split_indices(20, 0.25, seed=3) == (tr, va)
    assert split_indices(20, 0.25, seed=4) != (tr, va)


def test_reference_energy_fit_recovers_per_species_energies():
    mu_true = {"Cu": -3.5, "Au": -2.25}
    frames = []
    rng = np.random.default_rng(0)
    for _ in range(6):
        a = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((2, 1, 1))
        a.symbols[rng.random(len(a)) < 0.5] = "Au"
        e = sum(mu_true[s] for s in a.get_chemical_symbols())
        a.calc = SinglePointCalculator(a, energy=e, forces=np.zeros((len(a), 3)))
        frames.append(a)
    from facet.train.data import labelled_frames

    graphs = build_graphs(labelled_frames(frames, "synthetic"), ["Cu", "Au", "Ni"], 4.0)
    mu = fit_reference_energies(graphs, 3)
    np.testing.assert_allclose(mu, [-3.5, -2.25, 0.0], atol=1e-10)
    assert 10 < average_num_neighbors(graphs) < 30


def test_batched_predictions_equal_the_ase_calculator(tiny_file):
    frames = read_labelled(tiny_file)
    elements = elements_of(frames)
    cfg = facet.facet_tiny(elements, resid_init=0.3)
    torch.manual_seed(0)
    model = facet.build_model(cfg, torch.float64)
    graphs = build_graphs(frames, elements, cfg.r_max, dtype=torch.float64)
    batch = collate(graphs)
    pred = predict(model, batch, create_graph=False)
    calc = FacetCalculator(model)
    offset = 0
    for k, f in enumerate(frames):
        atoms = f.atoms.copy()
        atoms.calc = calc
        n = len(atoms)
        assert pred.energy[k].item() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(pred.forces[offset : offset + n].numpy(), atoms.get_forces(),
                                   atol=1e-9)
        np.testing.assert_allclose(pred.stress[k].numpy(), atoms.get_stress(), atol=1e-10)
        offset += n
    assert batch.stress_mask.tolist() == [f.stress is not None for f in frames]


def test_heldout_table_of_the_reference_itself(tmp_path, tiny_frames):
    """``heldout_table`` reads every held-out set and the trajectory, and pools them: EMT
    against its own labels has zero error; a calculator off by a constant shows it as the mean
    offset on every set."""
    from ase.calculators.emt import EMT

    from facet.data.emt import HELDOUT_SETS, heldout_table

    for k, name in enumerate(HELDOUT_SETS):
        ase.io.write(tmp_path / f"{name}.xyz", tiny_frames[k::4][:2], format="extxyz")
    ase.io.write(tmp_path / "traj.xyz", tiny_frames[3::4][:2], format="extxyz")
    table = heldout_table(EMT(), str(tmp_path), str(tmp_path / "traj.xyz"))
    assert list(table) == [*HELDOUT_SETS, "md_700K", "all"]
    assert table["all"]["frames"] == sum(table[n]["frames"] for n in table if n != "all") == 8
    for row in table.values():  # extxyz keeps 8 decimals of the labels: ~1e-5 meV
        assert row["e_mae_mev_atom"] < 1e-4 and row["f_mae_mev_a"] < 1e-4

    class Shifted(EMT):
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["energy"] += 0.002 * len(self.atoms)  # +2 meV/atom

    for row in heldout_table(Shifted(), str(tmp_path), str(tmp_path / "traj.xyz")).values():
        assert row["e_mean_offset_mev_atom"] == pytest.approx(2.0, abs=1e-4)
