"""facet-deploy: the written ML-IAP object, the printed deck lines, bad checkpoints."""

from __future__ import annotations

import pickle

import torch

import facet
from facet.cli.deploy import main as deploy_main
from facet.lammps.deck import recommended_comm_cutoff
from facet.lammps.mliap import FacetMLIAP


def test_deploy_writes_object_and_deck_lines(tiny_model, tmp_path, capsys):
    ckpt = facet.save_model(tiny_model, tmp_path / "m.pt")
    assert deploy_main([str(ckpt), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    deployed = tmp_path / "m-mliap.pt"
    assert f"pair_style mliap unified {deployed} 1" in out
    assert "pair_coeff * * Cu Au" in out
    cut = recommended_comm_cutoff(tiny_model.r_max, tiny_model.num_interactions)
    assert cut >= tiny_model.num_interactions * tiny_model.r_max + 2.0
    assert f"comm_modify cutoff {cut:g}" in out
    obj = torch.load(deployed, weights_only=False)
    assert isinstance(obj, FacetMLIAP)
    assert obj.element_types == ["Cu", "Au"]
    assert obj.rcutfac == tiny_model.r_max / 2  # LAMMPS' cutoff is 2 * rcutfac
    assert obj.ndescriptors == 1 and obj.nparams == 1
    assert obj.dtype_name == "float32" and obj.num_layers == tiny_model.num_interactions
    # the lazily built runtime state is not pickled
    again = pickle.loads(pickle.dumps(obj))
    assert again._module is None and again.script_bytes == obj.script_bytes


def test_deploy_bad_checkpoint_exits_2(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    assert deploy_main([str(tmp_path / "bad.pt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert deploy_main([str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_deploy_warns_when_rotation_error_exceeds_the_bound(tmp_path, capsys):
    """A model whose S2 grid aliases above facet.symmetry's bounds (a random tiny model on the
    coarsest SOFT grid, 6x5) gets a warning; the same config on the default grid does not."""
    from conftest import randomized_model

    from facet.symmetry import symmetry_error

    coarse = randomized_model(facet.facet_tiny(["Cu", "Au"], s2_grid="soft", s2_res=(6, 5)))
    fine = randomized_model(facet.facet_tiny(["Cu", "Au"]))
    assert not symmetry_error(coarse).within_bounds() and symmetry_error(fine).within_bounds()
    for name, model in (("coarse", coarse), ("fine", fine)):
        ckpt = facet.save_model(model, tmp_path / f"{name}.pt")
        assert deploy_main([str(ckpt)]) == 0
        err = capsys.readouterr().err
        assert ("its S2 grid aliases" in err) == (name == "coarse"), err
    assert deploy_main([str(tmp_path / "coarse.pt"), "--no-symmetry-check"]) == 0
    assert "aliases" not in capsys.readouterr().err
