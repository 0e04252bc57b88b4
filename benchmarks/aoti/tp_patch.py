"""First attempt, kept for the record: UVUTensorProduct.forward with the neighbour-slot count as
an unbacked SymInt (``.item()`` + torch._check) and per-node counts from index_add (static size)
instead of bincount (data-dependent size). torch.export (make_fx of autograd.grad, then export)
accepts it, but AOTInductor 2.13 fails to lower a reshape with the unbacked size
(``LoweringException: ValueRangeError: Invalid ranges [2:1]``). slots.py (the neighbour-slot map
as an input, all sizes backed) is the route that compiles."""
import torch

from facet.tensor_product import UVUTensorProduct


def tp_forward(self, h, neighbour, centre, n_out, y, basis, coefficients):
    n_edges = y.shape[0]
    nb = basis.shape[1]
    ones = torch.ones_like(centre)
    counts = torch.zeros(n_out, dtype=centre.dtype, device=centre.device).index_add(0, centre, ones)
    max_nb = counts.max().item()
    torch._check(max_nb >= 1)
    torch._check(max_nb <= n_edges)
    order = torch.argsort(centre, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(centre)
    slot[order] = torch.arange(n_edges, device=centre.device) - offsets[centre[order]]
    pos = centre * max_nb + slot
    n_pad = n_out * max_nb
    sums = []
    for blk in self.blocks:
        start, mul, d1, k_total, c_off, w0, n_paths, ko = blk
        coupling = self.couplings[c_off: c_off + self.d2 * d1 * k_total]
        t = (y @ coupling.reshape(self.d2, d1 * k_total)).reshape(n_edges, d1, 1, k_total)
        a = (t * basis.reshape(n_edges, 1, nb, 1)).reshape(n_edges, d1, nb * k_total)
        a_pad = torch.zeros(n_pad, d1, nb * k_total, dtype=a.dtype, device=a.device)
        a_pad = a_pad.index_put((pos,), a).reshape(n_out, max_nb * d1, nb * k_total)
        x = h[:, start: start + mul * d1].reshape(-1, mul, d1).transpose(1, 2)
        x_pad = torch.zeros(n_pad, d1, mul, dtype=h.dtype, device=h.device)
        x_pad = x_pad.index_put((pos,), x[neighbour]).reshape(n_out, max_nb * d1, mul)
        s = torch.bmm(a_pad.transpose(1, 2), x_pad).reshape(n_out, nb, k_total, mul)
        c = coefficients[:, w0: w0 + n_paths * mul].reshape(nb, n_paths, mul)
        c = c[:, self.paths_of_k[ko: ko + k_total], :]
        agg = (s * c).sum(1)
        sums.append(agg.transpose(1, 2).reshape(n_out, mul * k_total))
    return torch.cat(sums, dim=1).index_select(1, self.out_perm)


ORIGINAL = UVUTensorProduct.forward


def patch():
    UVUTensorProduct.forward = tp_forward


def unpatch():
    UVUTensorProduct.forward = ORIGINAL
