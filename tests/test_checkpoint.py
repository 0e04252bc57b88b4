"""One-file checkpoints: round trip, dtype, provenance and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomized_model

import facet
from facet.calculator import FacetCalculator


def test_round_trip_gives_identical_numbers(tiny_model, alloy, tmp_path):
    path = facet.save_model(tiny_model, tmp_path / "model.pt", extra={"note": "test"})
    loaded = facet.load_model(path)
    assert loaded.config == tiny_model.config
    assert loaded.provenance["training"] == {"note": "test"}
    assert loaded.provenance["facet_version"] == facet.__version__
    a, b = alloy.copy(), alloy.copy()
    a.calc = FacetCalculator(tiny_model)
    b.calc = FacetCalculator(path)
    assert a.get_potential_energy() == b.get_potential_energy()
    np.testing.assert_array_equal(a.get_forces(), b.get_forces())


def test_stored_metadata(tiny_model, tmp_path):
    path = facet.save_model(tiny_model, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["elements"] == ["Cu", "Au"]
    assert payload["r_max"] == tiny_model.config.r_max
    assert payload["num_interactions"] == 2
    assert payload["dtype"] == "float64"


def test_checkpoint_from_before_the_layer_norm_option_keeps_its_norm(tiny_config, tmp_path):
    """Checkpoints without ``layer_norm`` in their config were trained with the separate norm:
    they load with it (same numbers as before); new models default to the joint norm."""
    old = randomized_model(facet.FacetConfig(**{**tiny_config.to_dict(),
                                                "layer_norm": "separate"}))
    path = facet.save_model(old, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["layer_norm"]
    torch.save(payload, path)
    loaded = facet.load_model(path)
    assert loaded.config.layer_norm == "separate"
    assert facet.build_model(tiny_config).config.layer_norm == "joint"
    from conftest import triclinic_alloy

    a, b = triclinic_alloy(), triclinic_alloy()
    a.calc, b.calc = FacetCalculator(old), FacetCalculator(loaded)
    assert a.get_potential_energy() == b.get_potential_energy()


def test_float32_checkpoint_loads_as_float64(tiny_config, tmp_path):
    m32 = randomized_model(tiny_config, dtype=torch.float32)
    path = facet.save_model(m32, tmp_path / "m32.pt")
    m64 = facet.load_model(path, dtype=torch.float64)
    assert next(m64.parameters()).dtype == torch.float64
    for (k, p32), (_, p64) in zip(m32.named_parameters(), m64.named_parameters(), strict=True):
        assert torch.equal(p32.double(), p64), k
    # constants are rebuilt in float64, not cast from float32
    assert m64.layers[0].mix.to_grid.dtype == torch.float64


def test_missing_file(tmp_path):
    with pytest.raises(facet.CheckpointError, match="does not exist"):
        facet.load_model(tmp_path / "nope.pt")


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(facet.CheckpointError, match="empty"):
        facet.load_model(tmp_path / "e.pt")


def test_truncated_file(tiny_model, tmp_path):
    path = facet.save_model(tiny_model, tmp_path / "model.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(facet.CheckpointError, match="truncated, corrupt or another format"):
        facet.load_model(tmp_path / "cut.pt")


def test_foreign_torch_file(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(facet.CheckpointError, match="not a Facet checkpoint"):
        facet.load_model(tmp_path / "other.pt")


def test_text_file(tmp_path):
    (tmp_path / "model.pt").write_text("pair_style eam\n")
    with pytest.raises(facet.CheckpointError, match="cannot read"):
        facet.load_model(tmp_path / "model.pt")


def test_mismatched_weights(tiny_model, tmp_path):
    path = facet.save_model(tiny_model, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["embed_dim"] = 4
    torch.save(payload, path)
    with pytest.raises(facet.CheckpointError, match="do not match"):
        facet.load_model(path)
