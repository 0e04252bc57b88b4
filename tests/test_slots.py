"""The neighbour-slot formulation and the S2 fold (issue 15) give the numbers of the code they
replaced: the edge-list tensor product padded inside (``zeros`` + ``index_put``, re-implemented
here as the reference) and the unfolded S2 block, float64, to 1e-12."""

from __future__ import annotations

import pytest
import torch
from conftest import randomized_model, triclinic_alloy

import facet
from facet.contract import FacetPotential
from facet.graph import build_graph
from facet.layers import channel_gain_index, pad_index
from facet.tensor_product import neighbour_slots, pad_rows


def reference_tp(tp, h, neighbour, centre, n_out, y, basis, coefficients):
    """facet.tensor_product.UVUTensorProduct.forward before the slot map (git 9775496)."""
    n_edges = y.shape[0]
    nb = basis.shape[1]
    counts = torch.bincount(centre, minlength=n_out)
    max_nb = int(counts.max()) if n_edges > 0 else 1
    order = torch.argsort(centre, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(centre)
    slot[order] = torch.arange(n_edges) - offsets[centre[order]]
    pos = centre * max_nb + slot
    n_pad = n_out * max_nb
    sums = []
    for start, mul, d1, k_total, c_off, w0, n_paths, ko in tp.blocks:
        coupling = tp.couplings[c_off : c_off + tp.d2 * d1 * k_total]
        t = (y @ coupling.reshape(tp.d2, d1 * k_total)).reshape(n_edges, d1, 1, k_total)
        a = (t * basis.reshape(n_edges, 1, nb, 1)).reshape(n_edges, d1, nb * k_total)
        a_pad = torch.zeros(n_pad, d1, nb * k_total, dtype=a.dtype)
        a_pad = a_pad.index_put((pos,), a).reshape(n_out, max_nb * d1, nb * k_total)
        x = h[:, start : start + mul * d1].reshape(-1, mul, d1).transpose(1, 2)
        x_pad = torch.zeros(n_pad, d1, mul, dtype=h.dtype)
        x_pad = x_pad.index_put((pos,), x[neighbour]).reshape(n_out, max_nb * d1, mul)
        s = torch.bmm(a_pad.transpose(1, 2), x_pad).reshape(n_out, nb, k_total, mul)
        c = coefficients[:, w0 : w0 + n_paths * mul].reshape(nb, n_paths, mul)
        c = c[:, tp.paths_of_k[ko : ko + k_total], :]
        sums.append((s * c).sum(1).transpose(1, 2).reshape(n_out, mul * k_total))
    return torch.cat(sums, dim=1).index_select(1, natural_to_e3nn(tp))


def natural_to_e3nn(tp) -> torch.Tensor:
    """Column permutation from the blocks' natural layout ([mul, K] per input block, side by
    side) to e3nn's (output irreps in order, each [mul, d3])."""
    where = {}  # output irrep -> (column of its block's start, mul, K, k0, d3)
    start = 0
    for b, (_, mul, _, k_total, _, _, _, _) in enumerate(tp.blocks):
        k0 = 0
        for d3, i_out in zip(tp.k_splits[b], tp.k_targets[b], strict=True):
            where[i_out] = (start, mul, k_total, k0, d3)
            k0 += d3
        start += mul * k_total
    perm = []
    for i_out in range(len(where)):
        start, mul, k_total, k0, d3 = where[i_out]
        perm += [start + u * k_total + k0 + m for u in range(mul) for m in range(d3)]
    return torch.tensor(perm)


def reference_energies(model, species, centre, neighbour, rij):
    """Facet.forward as it was: per-edge basis, the padded TP above, the unfolded S2 block."""
    sh, r = model.edge_features(rij)
    h = model.embed(species)
    n = species.shape[0]
    for layer in model.layers:
        it = layer.interaction
        basis = it.radial.enveloped_basis(r)
        agg = reference_tp(it.tp, h, neighbour, centre, n, sh, basis, it.radial.coefficients)
        x = it.linear_out(agg * it.inv_norm) + it.resid(h)
        fold = getattr(layer.mix, "fold", False)
        if fold:
            layer.mix.fold = False
        try:
            x = layer.mix(x)
        finally:
            if fold:
                layer.mix.fold = True
        # per-channel gain and padded residual in e3nn's layout, per component
        gain_index = channel_gain_index(layer.irreps_out)
        pidx = pad_index(layer.irreps_in, layer.irreps_out)
        resid = h[:, pidx.clamp(min=0)] * (pidx >= 0).to(h.dtype)
        h = layer.norm(x) * layer.gain[gain_index] + resid
    return model.readout(h, species)


def energies_and_grad(fn, rij):
    rij = rij.clone().requires_grad_(True)
    e = fn(rij)
    (g,) = torch.autograd.grad(e.sum(), rij)
    return e.detach(), g


@pytest.fixture(scope="module")
def folded_model():
    """A tiny model whose S2 block folds (2 heads x 2 hidden < 8 channels) and two equivariant
    layers."""
    cfg = facet.facet_tiny(["Cu", "Au"], hidden_irreps=["8x0e+8x1o+4x2e"] * 2,
                           s2_mlp_hidden=[2], s2_heads=2)
    model = randomized_model(cfg, seed=3)
    assert all(layer.mix.fold for layer in model.layers[:-1])
    return model


@pytest.mark.parametrize("which", ["tiny", "folded"])
def test_model_matches_the_edge_list_code(which, tiny_model, folded_model):
    model = tiny_model if which == "tiny" else folded_model
    g = build_graph(triclinic_alloy(seed=2), model.config.elements, model.r_max)
    sp, c, nb = (torch.tensor(a) for a in (g.species, g.centre, g.neighbour))
    rij = torch.tensor(g.rij)
    e_ref, g_ref = energies_and_grad(lambda x: reference_energies(model, sp, c, nb, x), rij)
    e, gr = energies_and_grad(lambda x: model(sp, c, nb, x), rij)
    assert torch.allclose(e, e_ref, atol=1e-12, rtol=0)
    assert torch.allclose(gr, g_ref, atol=1e-12, rtol=0)
    # the slot entry point with per-layer row prefixes of one map (hop pruning: a third of the
    # atoms local, the rest ghosts) = the per-layer edge selections
    sp, pi, pj, used, n_out = FacetPotential(model).hop_pruning(sp, c, nb, len(sp) // 3)
    x = rij[used]
    slots = neighbour_slots(pi, n_out[0], len(pi))
    e_s = model.forward_slots(sp, pj, x, [slots[:m] for m in n_out])
    h = model.embed(sp)
    sh, r = model.edge_features(x)
    for k, m in enumerate(n_out):
        sel = pi < m
        h = model.layer(k, h, sh[sel], r[sel], pi[sel], pj[sel], m)
    assert torch.allclose(e_s, model.readout(h, sp[: n_out[-1]]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_padded_layers_equal_the_model(tiny_model, fused):
    """edge_slots once + layer_padded per layer (features as component-major rows: what the
    plugin and the ML-IAP KOKKOS path exchange between layers) = the model's energies and
    dE/drij, on whole structures (every layer outputs every atom)."""
    import facet.ops

    model = tiny_model
    g = build_graph(triclinic_alloy(seed=2), model.config.elements, model.r_max)
    sp, c, nb = (torch.tensor(a) for a in (g.species, g.centre, g.neighbour))
    rij = torch.tensor(g.rij)
    n = len(sp)

    def chained(x):
        sh, r = model.edge_features(x)
        slots, nbr_pad, y_pad, basis_pad = model.edge_slots(sh, r, c, nb, n)
        h = model.embed(sp)
        for k in range(model.num_interactions):
            h = model.layer_padded(k, h, nbr_pad, y_pad, r, slots, basis_pad)
        return model.readout(h, sp)

    for p in model.parameters():
        p.requires_grad_(False)
    with facet.ops.fused(model, fused):
        e_ref, g_ref = energies_and_grad(lambda x: model(sp, c, nb, x), rij)
        e, gr = energies_and_grad(chained, rij)
    assert torch.allclose(e, e_ref, atol=1e-12, rtol=0)
    assert torch.allclose(gr, g_ref, atol=1e-12, rtol=0)


def test_s2_fold_is_exact_to_rounding(folded_model):
    mix = folded_model.layers[0].mix
    x = torch.randn(7, folded_model.feature_dims[1], dtype=torch.float64)
    folded = mix(x)
    mix.fold = False
    try:
        plain = mix(x)
    finally:
        mix.fold = True
    assert torch.allclose(folded, plain, atol=1e-13, rtol=0)


def test_fold_is_chosen_by_cost():
    s = facet.build_model(facet.facet_s(["Cu"]))
    assert all(layer.mix.fold for layer in s.layers[:-1])  # 64 channels -> 2 x 16 on the grid
    tiny = facet.build_model(facet.facet_tiny(["Cu"]))  # 4 channels -> 8: no fold
    assert not tiny.layers[0].mix.fold


def test_neighbour_slots():
    centre = torch.tensor([2, 0, 2, 2, 1, 0])
    slots = neighbour_slots(centre, 4, 6)
    assert slots.tolist() == [[1, 5, 6], [4, 6, 6], [0, 2, 3], [6, 6, 6]]
    assert neighbour_slots(torch.zeros(0, dtype=torch.long), 3, 0).tolist() == [[0]] * 3
    assert neighbour_slots(torch.zeros(0, dtype=torch.long), 0, 0).shape == (0, 1)
    assert pad_rows(torch.zeros(0, 3)).shape == (1, 3)


def test_layer_programs_match_autograd(tiny_model):
    """layer_slots / layer_slots_vjp / readout_vjp (what facet.aoti exports) chain to the
    single pass's energies and dE/drij."""
    model = tiny_model
    g = build_graph(triclinic_alloy(seed=5), model.config.elements, model.r_max)
    sp, c, nb = (torch.tensor(a) for a in (g.species, g.centre, g.neighbour))
    rij = torch.tensor(g.rij)
    e_ref, g_ref = FacetPotential(model, chunk_edges=0)(sp, c, nb, rij, len(sp))
    slots = neighbour_slots(c, len(sp), len(c))
    e2, g2 = model.energy_forces_slots(sp, nb, rij, [slots] * model.num_interactions)
    hs = [model.embed(sp)]
    for k in range(model.num_interactions):
        hs.append(model.layer_slots(k, hs[k], nb, rij, slots))
    e, grad = model.readout_vjp(hs[-1], sp)
    g_rij = torch.zeros_like(rij)
    for k in reversed(range(model.num_interactions)):
        grad, gr = model.layer_slots_vjp(k, hs[k], nb, rij, slots, grad)
        g_rij += gr
    for got_e, got_g in ((e, g_rij), (e2, g2)):
        assert torch.allclose(got_e, e_ref, atol=1e-12, rtol=0)
        assert torch.allclose(got_g, g_ref, atol=1e-12, rtol=0)
