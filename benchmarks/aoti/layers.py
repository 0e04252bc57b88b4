"""Prototype: per-layer entry points as plain functions, exportable (no autograd across calls).

layer_fwd(k):  (h [n_in, d_in], neighbour [E], rij [E,3], slots [n_out, M]) -> h_out [n_out, d_out]
layer_vjp(k):  (..., grad_out [n_out, d_out]) -> (grad_h [n_in, d_in], grad_rij [E, 3])
               (recomputes layer k's forward: the recomputing evaluation of facet/chunks.py)
embed / readout are a gather and a dot product; the runtime does them (or they go in too).
The KOKKOS path, the chunked recomputing path and a C++ plugin drive these per layer.
"""
import time

import torch
from slots import layer_slots, pad_rows
from torch.fx.experimental.proxy_tensor import make_fx


def layer_forward(model, k, h, neighbour, rij, slots):
    sh, r = model.edge_features(rij)
    nbr_pad = torch.cat([neighbour, neighbour.new_zeros(1)])[slots]
    return layer_slots(model.layers[k], h, nbr_pad, pad_rows(sh)[slots], r, slots)


def layer_vjp(model, k, h, neighbour, rij, slots, grad_out):
    h = h.detach().requires_grad_(True)
    rij = rij.detach().requires_grad_(True)
    out = layer_forward(model, k, h, neighbour, rij, slots)
    gh, gr = torch.autograd.grad([out], [h, rij], [grad_out], allow_unused=True)
    if gh is None:
        gh = torch.zeros_like(h)
    return gh, gr


def export_layers(model, inputs, k_list=None):
    """ExportedPrograms {name: ep} for every layer's forward and vjp (dims: n_in, n_out, E, M)."""
    species, neighbour, rij, slots = inputs
    eps = {}
    h = model.embed(species)
    NIN = torch.export.Dim("n_in", min=2)
    NOUT = torch.export.Dim("n_out", min=2)
    E = torch.export.Dim("n_edges", min=2)
    M = torch.export.Dim("max_neighbours", min=2, max=4096)
    for k in range(len(model.layers)) if k_list is None else k_list:
        out = layer_forward(model, k, h, neighbour, rij, slots).detach()
        # n_in and n_out differ in the plain path (hop pruning); export with unequal examples so
        # that they stay separate symbols: drop the last output row for the example
        sl = slots[:-1]
        fwd = make_fx(lambda h_, nb_, r_, s_, k=k: layer_forward(model, k, h_, nb_, r_, s_),
                      tracing_mode="symbolic", _allow_non_fake_inputs=True)(h, neighbour, rij, sl)
        eps[f"layer{k}"] = torch.export.export(
            fwd, (h, neighbour, rij, sl),
            dynamic_shapes=({0: NIN}, {0: E}, {0: E}, {0: NOUT, 1: M}), strict=False)
        g = torch.ones_like(out[:-1])
        vjp = make_fx(lambda h_, nb_, r_, s_, g_, k=k: layer_vjp(model, k, h_, nb_, r_, s_, g_),
                      tracing_mode="symbolic", _allow_non_fake_inputs=True)(
                          h, neighbour, rij, sl, g)
        eps[f"layer{k}_vjp"] = torch.export.export(
            vjp, (h, neighbour, rij, sl, g),
            dynamic_shapes=({0: NIN}, {0: E}, {0: E}, {0: NOUT, 1: M}, {0: NOUT}), strict=False)
        h = out
    return eps


if __name__ == "__main__":
    import sys

    from common import graph_tensors, make_atoms, make_model
    from slots import neighbour_slots
    torch.set_num_threads(1)
    which = sys.argv[1] if len(sys.argv) > 1 else "emt"
    dt = torch.float64
    model = make_model(which, dt)
    atoms = make_atoms(108, elements=tuple(model.config.elements))
    sp, c, nb, rij = graph_tensors(model, atoms, dt)
    slots = neighbour_slots(c, len(sp), len(c))
    t0 = time.time()
    eps = export_layers(model, (sp, nb, rij, slots))
    print(f"exported {list(eps)} in {time.time()-t0:.1f}s")
    # check: chain of layer fwd + vjp == autograd through the whole model (all atoms local)
    from slots import ef_slots
    e_ref, g_ref = ef_slots(model, sp, nb, rij, slots)
    hs = [model.embed(sp)]
    for k in range(len(model.layers)):
        hs.append(eps[f"layer{k}"].module()(hs[k], nb, rij, slots))
    h_last = hs[-1].detach().requires_grad_(True)
    e = model.readout(h_last, sp)
    (g,) = torch.autograd.grad([e.sum()], [h_last])
    g_rij = torch.zeros_like(rij)
    for k in range(len(model.layers) - 1, -1, -1):
        g, gr = eps[f"layer{k}_vjp"].module()(hs[k], nb, rij, slots, g)
        g_rij += gr
    print("max|de|", (e - e_ref).abs().max().item(), "max|dg|", (g_rij - g_ref).abs().max().item())
