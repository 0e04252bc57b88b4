"""The frozen contract: TorchScript == eager model == ASE calculator, local/ghost semantics."""

from __future__ import annotations

import numpy as np
import torch
from conftest import randomized_model

import facet
from facet.calculator import FacetCalculator
from facet.contract import FacetPotential, energy_forces_stress
from facet.freeze import from_bytes, script_model, script_potential, to_bytes
from facet.graph import build_graph


def graph_tensors(atoms, model):
    g = build_graph(atoms, model.config.elements, model.r_max)
    return (
        torch.tensor(g.species),
        torch.tensor(g.centre),
        torch.tensor(g.neighbour),
        torch.tensor(g.rij),
    )


def test_script_equals_eager_equals_ase(tiny_model, alloy):
    species, centre, neighbour, rij = graph_tensors(alloy, tiny_model)
    n = len(alloy)
    e_eager, g_eager = FacetPotential(tiny_model)(species, centre, neighbour, rij, n)
    scripted = from_bytes(to_bytes(script_potential(tiny_model)))
    e_script, g_script = scripted(species, centre, neighbour, rij, n)
    assert torch.allclose(e_eager, e_script, atol=1e-12, rtol=0)
    assert torch.allclose(g_eager, g_script, atol=1e-12, rtol=0)

    energies, total, forces, stress = energy_forces_stress(
        tiny_model, species, centre, neighbour, rij.clone(), volume=alloy.get_volume()
    )
    a = alloy.copy()
    a.calc = FacetCalculator(tiny_model, script=True)
    assert abs(a.get_potential_energy() - total.item()) < 1e-10
    np.testing.assert_allclose(a.get_potential_energies(), e_script.numpy(), atol=1e-12)
    np.testing.assert_allclose(a.get_forces(), forces.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(a.get_stress(voigt=False), stress.detach().numpy(), atol=1e-10)


def test_layer_entry_points_reproduce_forward(tiny_model, alloy):
    species, centre, neighbour, rij = graph_tensors(alloy, tiny_model)
    m = script_model(tiny_model)
    sh, r = m.edge_features(rij)
    h = m.embed(species)
    for k in range(tiny_model.num_interactions):
        h = m.layer(k, h, sh, r, centre, neighbour)
    e = m.readout(h, species)
    assert torch.allclose(e, tiny_model(species, centre, neighbour, rij), atol=1e-12)


def test_local_energy_with_ghost_copies(tiny_model, alloy):
    """Periodic images written out as explicit ghost atoms give the same local energies and
    the same forces once ghost gradients are folded back to their owners (what LAMMPS does)."""
    from ase.neighborlist import neighbor_list

    n = len(alloy)
    depth = tiny_model.num_interactions * tiny_model.r_max
    # explicit cluster: all images within `depth` + r_max of the home cell, home atoms first
    i, shifts = neighbor_list("iS", alloy, depth + tiny_model.r_max + 1e-3)[0:2]
    keys = {(int(a), *map(int, s)) for a, s in zip(i, shifts, strict=True) if any(s)}
    ghosts = sorted(keys)
    owner = np.array([k[0] for k in ghosts], dtype=np.int64)
    pos = np.concatenate(
        [alloy.positions, np.array([alloy.positions[k[0]] + np.array(k[1:]) @ alloy.cell.array
                                    for k in ghosts])]
    )
    from ase import Atoms

    cluster = Atoms(
        [alloy[k].symbol for k in range(n)] + [alloy[k].symbol for k in owner],
        positions=pos,
        pbc=False,
    )
    species, centre, neighbour, rij = graph_tensors(cluster, tiny_model)
    e_loc, g = FacetPotential(tiny_model)(species, centre, neighbour, rij, n)
    f = torch.zeros(len(cluster), 3, dtype=g.dtype)
    f.index_add_(0, centre, g).index_add_(0, neighbour, -g)
    f_home = f[:n].clone()
    f_home.index_add_(0, torch.tensor(owner), f[n:])
    a = alloy.copy()
    a.calc = FacetCalculator(tiny_model)
    np.testing.assert_allclose(e_loc.numpy(), a.get_potential_energies(), atol=1e-10)
    np.testing.assert_allclose(f_home.numpy(), a.get_forces(), atol=1e-10)


def test_float32_model_close_to_float64(tiny_config, alloy, tmp_path):
    m64 = randomized_model(tiny_config)
    path = facet.save_model(m64, tmp_path / "m.pt")
    m32 = facet.load_model(path, dtype=torch.float32)
    a64, a32 = alloy.copy(), alloy.copy()
    a64.calc = FacetCalculator(m64)
    a32.calc = FacetCalculator(m32, dtype="float32")
    assert abs(a64.get_potential_energy() - a32.get_potential_energy()) < 1e-4 * len(alloy)
    assert np.abs(a64.get_forces() - a32.get_forces()).max() < 1e-4


def test_freezing_and_loading_emit_no_deprecation_warning(tiny_model, tmp_path):
    """torch 2.13 deprecates torch.jit.script/save/load; the project's TorchScript path stays
    quiet (facet.jitcompat), including the ML-IAP object a LAMMPS rank loads."""
    import warnings

    from facet.lammps.mliap import FacetMLIAP

    ckpt = facet.save_model(tiny_model, tmp_path / "m.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_bytes(to_bytes(script_potential(tiny_model)))
        script_model(tiny_model)
        obj = FacetMLIAP.from_checkpoint(ckpt)
        obj._load()
        FacetCalculator(tiny_model, script=True)
    noisy = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not noisy, [str(w.message) for w in noisy]
