"""Prototype: Facet with a padded neighbour-slot map as input (no data-dependent shapes).

``slots [n_out, M]``: for every output node, the indices of its edges (any order), padded with
``n_edges`` (an all-zero edge). It replaces the per-layer bincount/argsort/cumsum/zeros/index_put
of facet/tensor_product.py by gathers, makes every shape a function of the input shapes
(n_atoms, n_edges, M) so torch.export needs no unbacked symbols, and serves every layer of a
hop-pruned evaluation by row slicing (layer k outputs the first n_out[k] nodes).
"""
from __future__ import annotations

import torch


def neighbour_slots(centre: torch.Tensor, n_out: int, n_edges: int) -> torch.Tensor:
    """[n_out, M] edge index of each neighbour slot of each node, padded with ``n_edges``."""
    counts = torch.bincount(centre, minlength=n_out)
    m = int(counts.max()) if n_edges > 0 else 1
    order = torch.argsort(centre, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    c_sorted = centre[order]
    slot = torch.arange(n_edges, device=centre.device) - offsets[c_sorted]
    slots = torch.full((n_out, m), n_edges, dtype=torch.long, device=centre.device)
    slots[c_sorted, slot] = order
    return slots


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """x with one zero row appended (the target of padded slots)."""
    return torch.cat([x, x.new_zeros((1,) + tuple(x.shape[1:]))])


def tp_slots(tp, h, nbr_pad, y_pad, basis_pad, coefficients):
    """UVUTensorProduct on padded slots: nbr_pad [n, M] (padding -> any valid row),
    y_pad [n, M, d2], basis_pad [n, M, nb] (zero on padding)."""
    n_out, m = nbr_pad.shape
    nb = basis_pad.shape[2]
    sums = []
    for blk in tp.blocks:
        start, mul, d1, k_total, c_off, w0, n_paths, ko = blk
        coupling = tp.couplings[c_off: c_off + tp.d2 * d1 * k_total]
        t = (y_pad @ coupling.reshape(tp.d2, d1 * k_total)).reshape(n_out, m, d1, 1, k_total)
        a_pad = (t * basis_pad.reshape(n_out, m, 1, nb, 1)).reshape(n_out, m * d1, nb * k_total)
        x = h[:, start: start + mul * d1].reshape(-1, mul, d1).transpose(1, 2)  # [n_in, d1, mul]
        x_pad = x[nbr_pad].reshape(n_out, m * d1, mul)
        s = torch.bmm(a_pad.transpose(1, 2), x_pad).reshape(n_out, nb, k_total, mul)
        c = coefficients[:, w0: w0 + n_paths * mul].reshape(nb, n_paths, mul)
        c = c[:, tp.paths_of_k[ko: ko + k_total], :]
        agg = (s * c).sum(1)
        sums.append(agg.transpose(1, 2).reshape(n_out, mul * k_total))
    return torch.cat(sums, dim=1).index_select(1, tp.out_perm)


def layer_slots(layer, h, nbr_pad, y_pad, r, slots):
    """FacetLayer.forward for the first n_out = nbr_pad.shape[0] nodes."""
    n_out = nbr_pad.shape[0]
    it = layer.interaction
    basis_pad = pad_rows(it.radial.enveloped_basis(r))[slots]
    agg = tp_slots(it.tp, h, nbr_pad, y_pad, basis_pad, it.radial.coefficients)
    rows = h[:n_out]
    x = it.linear_out(agg * it.inv_norm) + it.resid(rows)
    x = mix_forward(layer, x)
    resid = h[:n_out, layer.pad_src] * layer.pad_mask
    return layer.norm(x) * layer.gain[layer.gain_index] + resid


def model_slots(model, species, neighbour, rij, slots, n_out: list[int] | None = None):
    """Per-atom energies of the first n_out[-1] nodes (all nodes if n_out is None)."""
    sh, r = model.edge_features(rij)
    # gather per-slot quantities once; every layer uses a row prefix
    y_pad = pad_rows(sh)[slots]
    nbr_pad = torch.cat([neighbour, neighbour.new_zeros(1)])[slots]
    h = model.embed(species)
    for k, layer in enumerate(model.layers):
        n = slots.shape[0] if n_out is None else n_out[k]
        h = layer_slots(layer, h, nbr_pad[:n], y_pad[:n], r, slots[:n])
    return model.readout(h, species[: h.shape[0]])


def ef_slots(model, species, neighbour, rij, slots):
    rij = rij.detach().requires_grad_(True)
    e = model_slots(model, species, neighbour, rij, slots)
    (g,) = torch.autograd.grad([e.sum()], [rij])
    return e.detach(), g


def s2_folded(mix, x):
    """S2Mixing.forward with the first grid-MLP layer moved before the grid transform.

    Both are linear: ``(to_grid^T C) W1 = to_grid^T (C W1)``, so the first MLP matmul acts on
    the ``(lmax+1)^2`` coefficients instead of the ``n_grid`` points (9 instead of 306 rows per
    atom for Facet-S) and the grid transform on ``heads * hidden`` (32) instead of ``u`` (64)
    channels. Same function, re-associated (rounding differs at the 1e-16 level).
    """
    if mix.identity:
        return mix(x)
    n = x.shape[0]
    u = mix.channels
    heads = mix.heads
    up = mix.proj_up(x)
    blocks = []
    start = 0
    for d in mix.block_dims:
        blocks.append(up[:, start: start + u * d].reshape(n, u, d))
        start += u * d
    coeffs = torch.cat(blocks, dim=-1)  # [n, u, dim]
    dim = coeffs.shape[2]
    weights = list(mix.mlp.weights)
    w1 = weights[0]  # [head_dim, hidden]
    ch = coeffs.reshape(n, heads, u // heads, dim).permute(0, 3, 1, 2)  # [n, dim, heads, hd]
    z = torch.matmul(ch, w1).reshape(n, dim, heads * w1.shape[1])
    g = torch.nn.functional.silu(torch.matmul(mix.to_grid.t(), z))  # [n, n_grid, heads*hid]
    n_grid = g.shape[1]
    g = g.reshape(n, n_grid, heads, w1.shape[1])
    for w in weights[1:]:
        g = torch.nn.functional.silu(g @ w)
    grid = g.reshape(n, n_grid, u)
    back = torch.matmul(mix.from_grid.t(), grid)  # [n, dim, u]
    parts = [x[:, : mix.num_scalars_in]]
    start = 0
    for d in mix.block_dims:
        parts.append(back[:, start: start + d, :].transpose(1, 2).reshape(n, u * d))
        start += d
    return mix.proj_down(torch.cat(parts, dim=-1))


FOLD_S2 = False  # set by callers (bench/build scripts: --fold-s2)


def mix_forward(layer, x):
    if FOLD_S2 and not layer.scalar_only:
        return s2_folded(layer.mix, x)
    return layer.mix(x)


# ------------------------------------------------------------------------------------------
# B-spline locality: group each node's neighbour slots by spline interval
#
# A cubic B-spline basis has four non-zero functions at any r (those of r's knot interval j:
# basis j..j+3), so half of the padded tensor ``a_pad`` of the slot formulation is zeros for
# num_basis = 8. With one slot map per interval, each interval's bmm contracts only its four
# basis functions: half the TP matmul FLOPs and half the edge-sized intermediates.


def spline_interval(model, r: torch.Tensor) -> torch.Tensor:
    """The knot interval of every edge (as CubicBSplineBasis computes it)."""
    basis = model.layers[0].interaction.radial.basis
    t = r.detach() * basis.inv_h
    return torch.clamp(torch.floor(t), 0.0, float(basis.num_basis - 4)).to(torch.long)


def interval_slots(centre, interval, n_out: int, n_edges: int, n_intervals: int,
                   min_width: int = 2) -> list[torch.Tensor]:
    """One slot map [n_out, M_j] per interval j (edges of node i in interval j), padded with
    ``n_edges``; at least ``min_width`` columns each (torch.export specialises sizes 0 and 1)."""
    out = []
    for j in range(n_intervals):
        sel = torch.nonzero(interval == j).squeeze(1)
        s = neighbour_slots(centre[sel], n_out, sel.shape[0])
        s = torch.where(s < sel.shape[0], sel[s.clamp(max=max(sel.shape[0] - 1, 0))]
                        if sel.shape[0] else s, torch.full_like(s, n_edges))
        if s.shape[1] < min_width:
            s = torch.cat([s, s.new_full((n_out, min_width - s.shape[1]), n_edges)], 1)
        out.append(s)
    return out


def local_spline(model, r: torch.Tensor, interval: torch.Tensor) -> torch.Tensor:
    """The four non-zero B-spline values of every edge in its interval, times the envelope:
    ``[E, 4]`` (CubicBSplineBasis.forward before the scatter, with the given interval)."""
    radial = model.layers[0].interaction.radial
    u = r * radial.basis.inv_h - interval.to(r.dtype)
    u2 = u * u
    u3 = u2 * u
    vals = torch.stack([(1.0 - u) ** 3, 3.0 * u3 - 6.0 * u2 + 4.0,
                        -3.0 * u3 + 3.0 * u2 + 3.0 * u + 1.0, u3], dim=-1) * (1.0 / 6.0)
    return vals * radial.envelope(r).unsqueeze(-1)


def tp_intervals(tp, h, nbr_pads, y_pads, v_pads, coefficients):
    """UVUTensorProduct from per-interval padded slots (interval j: basis j..j+3)."""
    n_out = nbr_pads[0].shape[0]
    sums = []
    for blk in tp.blocks:
        start, mul, d1, k_total, c_off, w0, n_paths, ko = blk
        coupling = tp.couplings[c_off: c_off + tp.d2 * d1 * k_total]
        coupling = coupling.reshape(tp.d2, d1 * k_total)
        c = coefficients[:, w0: w0 + n_paths * mul].reshape(-1, n_paths, mul)
        c = c[:, tp.paths_of_k[ko: ko + k_total], :]  # [nb, K, mul]
        x = h[:, start: start + mul * d1].reshape(-1, mul, d1).transpose(1, 2)
        agg = None
        for j, (nbr_pad, y_pad, v_pad) in enumerate(zip(nbr_pads, y_pads, v_pads, strict=True)):
            m = nbr_pad.shape[1]
            t = (y_pad @ coupling).reshape(n_out, m, d1, 1, k_total)
            a_pad = (t * v_pad.reshape(n_out, m, 1, 4, 1)).reshape(n_out, m * d1, 4 * k_total)
            x_pad = x[nbr_pad].reshape(n_out, m * d1, mul)
            s = torch.bmm(a_pad.transpose(1, 2), x_pad).reshape(n_out, 4, k_total, mul)
            part = (s * c[j: j + 4]).sum(1)
            agg = part if agg is None else agg + part
        sums.append(agg.transpose(1, 2).reshape(n_out, mul * k_total))
    return torch.cat(sums, dim=1).index_select(1, tp.out_perm)


def model_intervals(model, species, neighbour, rij, interval, slots_list):
    """Per-atom energies (all nodes) with the per-interval slot maps."""
    sh, r = model.edge_features(rij)
    vals = pad_rows(local_spline(model, r, interval))
    sh_p = pad_rows(sh)
    nb_p = torch.cat([neighbour, neighbour.new_zeros(1)])
    nbr_pads = [nb_p[s] for s in slots_list]
    y_pads = [sh_p[s] for s in slots_list]
    v_pads = [vals[s] for s in slots_list]
    h = model.embed(species)
    for layer in model.layers:
        it = layer.interaction
        agg = tp_intervals(it.tp, h, nbr_pads, y_pads, v_pads, it.radial.coefficients)
        x = it.linear_out(agg * it.inv_norm) + it.resid(h)
        x = mix_forward(layer, x)
        resid = h[:, layer.pad_src] * layer.pad_mask
        h = layer.norm(x) * layer.gain[layer.gain_index] + resid
    return model.readout(h, species)


def ef_intervals(model, species, neighbour, rij, interval, slots_list):
    rij = rij.detach().requires_grad_(True)
    e = model_intervals(model, species, neighbour, rij, interval, slots_list)
    (g,) = torch.autograd.grad([e.sum()], [rij])
    return e.detach(), g


def interval_inputs(model, centre, rij, n_out):
    """What a runtime computes before calling: each edge's interval and the slot maps."""
    r = torch.linalg.vector_norm(rij, dim=1)
    interval = spline_interval(model, r)
    n_int = model.layers[0].interaction.radial.basis.num_basis - 3
    return interval, interval_slots(centre, interval, n_out, rij.shape[0], n_int)
