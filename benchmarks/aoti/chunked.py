"""The recomputing evaluation (facet/chunks.py) driven over AOTI per-layer entry points.

Forward: every layer in row chunks of about ``chunk_edges`` edges, keeping only the node
features; backward: ``layer{k}_vjp`` per chunk (recomputes that chunk's forward inside the
compiled function). Each chunk reads only its own rows (first, as the layer functions expect)
and its neighbours' rows, renumbered, so the work per chunk does not grow with the system.
All atoms local (the ASE case); the KOKKOS / plain LAMMPS paths differ only in which rows a
layer outputs and the halo exchanges between layers.
"""
from __future__ import annotations

import torch
from slots import neighbour_slots

from facet.chunks import row_chunks


class ChunkPlan:
    """Per-chunk renumbered inputs, shared by every layer (edges sorted by centre)."""

    def __init__(self, centre, neighbour, rij, n, chunk_edges):
        order = torch.argsort(centre, stable=True)
        self.order = order
        c, nb, self.rij = centre[order], neighbour[order], rij[order]
        counts = torch.bincount(c, minlength=n)
        rows, edges = row_chunks(counts, chunk_edges)
        self.chunks = []
        local = torch.full((n,), -1, dtype=torch.long)
        for i in range(len(rows) - 1):
            a, b, ea, eb = rows[i], rows[i + 1], edges[i], edges[i + 1]
            if b == a:
                continue
            nb_c = nb[ea:eb]
            others = torch.unique(nb_c)
            others = others[(others < a) | (others >= b)]
            read = torch.cat([torch.arange(a, b), others])
            local[read] = torch.arange(len(read))
            nb_local = local[nb_c]
            local[read] = -1
            slots = neighbour_slots(c[ea:eb] - a, b - a, eb - ea)
            self.chunks.append((a, b, ea, eb, read, nb_local, slots))


def energy_forces_chunked(fns, model, species, centre, neighbour, rij, chunk_edges=4096,
                          plan=None):
    """Per-atom energies and dE/drij (in the caller's edge order) from the per-layer package."""
    n = species.shape[0]
    L = len(model.layers)
    plan = plan or ChunkPlan(centre, neighbour, rij, n, chunk_edges)
    x = plan.rij
    hs = [model.embed(species)]
    for k in range(L):
        out = hs[k].new_empty(n, model.feature_dims[k + 1])
        for a, b, ea, eb, read, nb_local, slots in plan.chunks:
            out[a:b] = fns[f"layer{k}"](hs[k][read], nb_local, x[ea:eb], slots)
        hs.append(out)
    h_last = hs[-1].requires_grad_(True)
    e = model.readout(h_last, species)
    (g,) = torch.autograd.grad([e.sum()], [h_last])
    g_x = torch.zeros_like(x)
    for k in range(L - 1, -1, -1):
        g_h = torch.zeros_like(hs[k]) if k > 0 else None
        for a, b, ea, eb, read, nb_local, slots in plan.chunks:
            gh, gr = fns[f"layer{k}_vjp"](hs[k][read], nb_local, x[ea:eb], slots, g[a:b])
            g_x[ea:eb] += gr
            if g_h is not None:
                g_h.index_add_(0, read, gh)
        g = g_h
    return e.detach(), torch.zeros_like(rij).index_put_((plan.order,), g_x)
