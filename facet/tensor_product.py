"""A fused channel-wise ("uvu") tensor-product convolution of node features with edge spherical
harmonics.

``out[e, u, k] = w[e, u, p] * sqrt(2 l3 + 1) * sum_ij C^p[i, j, k] x[e, u, i] Y[e, j]`` for every
path p = (l1 x l2 -> l3), C^p the Wigner-3j symbols. Numerically identical to e3nn's
``TensorProduct(..., "uvu", shared_weights=False)`` with component/element normalisation (tested),
but computed per node: the tensor product is linear in the radial weights, so the radial
coefficients are applied after a per-node batched matmul over neighbour slots (see ``forward``).
No per-edge message tensor is formed, which saves memory and the many edge-sized passes of
e3nn's per-path implementation. Output layout: e3nn irreps (mul-major blocks) in the order of
``irreps_out``.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from facet.blocks import irrep_shapes, to_dmajor


class UVUTensorProduct(nn.Module):
    """``x`` (irreps_in1) (x) ``y`` (irreps_in2, one copy each) -> irreps_out, weights per edge.

    Args:
        irreps_in1: node feature irreps, each irrep type at most once.
        irreps_in2: edge attribute irreps (spherical harmonics), multiplicity 1.
        instructions: ``(i1, i2, i_out)`` triples; output block ``i_out`` must have mul(i1).
    """

    # TorchScript compiles the fused branch only when ``fused`` is on (then the facet:: operators
    # must be loaded: facet.ops.load()), and a file scripted with it falls back to the batched
    # matmul off the CPU
    __constants__ = ["fused"]

    def __init__(
        self,
        irreps_in1: o3.Irreps,
        irreps_in2: o3.Irreps,
        irreps_out: o3.Irreps,
        instructions: list[tuple[int, int, int]],
    ) -> None:
        super().__init__()
        self.irreps_in1, self.irreps_in2 = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2)
        self.irreps_out = o3.Irreps(irreps_out)
        if any(mul != 1 for mul, _ in self.irreps_in2):
            raise ValueError("irreps_in2 must have multiplicity 1")
        dtype = torch.get_default_dtype()
        in2_offsets = [s.start for s in self.irreps_in2.slices()]
        in1_offsets = [s.start for s in self.irreps_in1.slices()]
        d2 = self.irreps_in2.dim
        self.weight_numel = 0
        couplings: list[torch.Tensor] = []
        paths_of_k: list[torch.Tensor] = []
        # per input block with paths: x offset, mul, d1, K (its paths' output components),
        # offset of its coupling [d2, d1, K] in the flat buffer, of its weight columns, its
        # number of paths, offset of its entries in paths_of_k
        self.blocks: list[tuple[int, int, int, int, int, int, int, int]] = []
        by_out: dict[int, tuple[int, int, int]] = {}
        c_off = 0
        k_off = 0
        for i1, (mul, ir1) in enumerate(self.irreps_in1):
            paths = [ins for ins in instructions if ins[0] == i1]
            if not paths:
                continue
            d1 = ir1.dim
            k_total = sum(self.irreps_out[i_out].ir.dim for _, _, i_out in paths)
            coupling = torch.zeros(d2, d1, k_total, dtype=torch.float64)
            path_of_k = torch.zeros(k_total, dtype=torch.long)
            k0 = 0
            for p, (_, i2, i_out) in enumerate(paths):
                ir2 = self.irreps_in2[i2].ir
                mul_out, ir3 = self.irreps_out[i_out]
                if mul_out != mul:
                    raise ValueError("uvu output multiplicity must equal the input's")
                if ir3 not in ir1 * ir2:
                    raise ValueError(f"path {ir1} x {ir2} -> {ir3} violates selection rules")
                if i_out in by_out:
                    raise ValueError(f"output block {i_out} has two paths")
                c = o3.wigner_3j(ir1.l, ir2.l, ir3.l, dtype=torch.float64) * math.sqrt(ir3.dim)
                j0 = in2_offsets[i2]
                coupling[j0 : j0 + ir2.dim, :, k0 : k0 + ir3.dim] = c.permute(1, 0, 2)
                path_of_k[k0 : k0 + ir3.dim] = p
                by_out[i_out] = (len(self.blocks), k0, ir3.dim)
                k0 += ir3.dim
            self.blocks.append(
                (in1_offsets[i1], mul, d1, k_total, c_off, self.weight_numel, len(paths), k_off)
            )
            couplings.append(coupling.reshape(-1))
            paths_of_k.append(path_of_k)
            c_off += d2 * d1 * k_total
            k_off += k_total
            self.weight_numel += len(paths) * mul
        if sorted(by_out) != list(range(len(self.irreps_out))):
            raise ValueError("every output block needs exactly one path")
        # output block i_out = slice k0 : k0 + d3 of its input block's [K, mul] result: per input
        # block, the sizes along K and the output block of each piece (K order)
        self.num_out = len(self.irreps_out)
        # h split once into its irreps (facet.blocks.to_dmajor: one gradient concatenation
        # instead of a zero-filled full-size gradient per sliced block); the irrep of each block
        self.in1_shapes = irrep_shapes(self.irreps_in1)
        self.block_irrep = [in1_offsets.index(b[0]) for b in self.blocks]
        k_splits: list[list[int]] = [[] for _ in self.blocks]
        k_targets: list[list[int]] = [[] for _ in self.blocks]
        for i_out, (blk, _, d3) in sorted(by_out.items(), key=lambda kv: kv[1][:2]):
            k_splits[blk].append(d3)
            k_targets[blk].append(i_out)
        self.k_splits, self.k_targets = k_splits, k_targets
        # where output block i_out lies in the per-input-block results ([n, K, mul] each):
        # (input block, first of its components along K)
        self.out_pieces: list[tuple[int, int]] = [by_out[i][:2] for i in range(self.num_out)]
        # the blocks as facet::uvu_tp_layer reads them: (input irrep, mul, d1, K, coupling
        # offset, first coefficient column, paths, offset in paths_of_k) each
        self.layer_blocks: list[int] = []
        for b, (_, mul, d1, k_total, c_off, w0, n_paths, ko) in enumerate(self.blocks):
            self.layer_blocks += [self.block_irrep[b], mul, d1, k_total, c_off, w0, n_paths, ko]
        self.d2 = d2
        # evaluate with the fused CPU kernels of facet.ops (inference only; see use_fused)
        self.fused = False
        self.register_buffer("couplings", torch.cat(couplings).to(dtype), persistent=False)
        self.register_buffer("paths_of_k", torch.cat(paths_of_k), persistent=False)

    def forward(
        self,
        h: torch.Tensor,
        neighbour: torch.Tensor,
        centre: torch.Tensor,
        n_out: int,
        y: torch.Tensor,
        basis: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """Aggregated messages for the first ``n_out`` nodes, ``[n_out, irreps_out.dim]``, from
        an edge list (edges centred on nodes ``0..n_out-1``). Builds the neighbour-slot map
        (``neighbour_slots``) and calls ``forward_slots``."""
        slots = neighbour_slots(centre, n_out, y.shape[0])
        return self.forward_slots(h, gather_slots(neighbour, slots), gather_slots(y, slots),
                                  gather_slots(basis, slots), coefficients)

    def forward_slots(
        self,
        h: torch.Tensor,
        nbr_pad: torch.Tensor,
        y_pad: torch.Tensor,
        basis_pad: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """Aggregated messages ``[n_out, irreps_out.dim]`` (e3nn layout) from per-slot edge data:
        ``forward_blocks`` concatenated."""
        blocks = self.forward_blocks(h, nbr_pad, y_pad, basis_pad, coefficients)
        return torch.cat([b.reshape(b.shape[0], b.shape[1] * b.shape[2]) for b in blocks], dim=1)

    def forward_blocks(
        self,
        h: torch.Tensor,
        nbr_pad: torch.Tensor,
        y_pad: torch.Tensor,
        basis_pad: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> list[torch.Tensor]:
        """``forward_dmajor_in`` from node features ``h`` ``[n_in, irreps_in1.dim]`` (e3nn
        layout)."""
        return self.forward_dmajor_in(to_dmajor(h, self.in1_shapes), nbr_pad, y_pad, basis_pad,
                                      coefficients)

    def forward_dmajor_in(
        self,
        xs: list[torch.Tensor],
        nbr_pad: torch.Tensor,
        y_pad: torch.Tensor,
        basis_pad: torch.Tensor,
        coefficients: torch.Tensor,
        split: bool = True,
    ) -> list[torch.Tensor]:
        """Aggregated messages as one ``[n_out, mul, d3]`` block per output irrep (views of the
        per-input-block results; no per-irrep slicing, whose gradients would be zero-filled
        full-size tensors), from the node features as one component-major block
        ``[n_in, d1, mul]`` per irrep of ``irreps_in1`` (any strides; contiguous ones reach
        the fused kernel without a copy) and per-slot edge data: for every output node n and
        neighbour slot
        s (``slots [n_out, M]``, see ``neighbour_slots``) ``nbr_pad [n_out, M]`` (row of ``h``
        of the neighbour; any valid row on padding), ``y_pad [n_out, M, d2]`` and
        ``basis_pad [n_out, M, nb]`` (zero on padding).

        Node-level formulation: with ``w_e = basis_e @ C`` linear in the radial basis,
        ``agg_n[k, u] = sum_b C[b, p(k), u] S_n[b, k, u]`` where
        ``S_n[b, k, u] = sum_{e in n} sum_i basis[e, b] T[e, i, k] x[e, i, u]`` and
        ``T_e = Y_e @ coupling``. S is one batched matmul per node over its neighbour slots,
        so no per-edge message tensor is ever formed: the slot-sized tensors kept for the
        backward pass are ``basis (x) T`` and the gathered neighbour features. Every shape is a
        function of the input shapes (no data-dependent sizes: exportable). With ``fused`` on
        the CPU all blocks are one call of ``torch.ops.facet.uvu_tp_layer``
        (``facet.ops``): edge by edge in cache, ~4x fewer multiplications than the padded bmm;
        of the slot-sized tensors only ``T`` is kept for the backward pass (the kernel
        recomputes the rest). Inference only.

        ``split=False`` (fused only): the kernel's results before the split into output
        irreps, one ``[n_out, K, mul]`` (component-major) per input block with paths
        (``blocks``); output irrep i is components ``k0 .. k0 + d`` of result ``b`` for
        ``(b, k0) = out_pieces[i]``.
        """
        n_out, m = nbr_pad.shape[0], nbr_pad.shape[1]
        nb = basis_pad.shape[2]
        fused = self.fused and y_pad.device.type == "cpu"
        results: list[torch.Tensor] = []
        if fused:
            results = torch.ops.facet.uvu_tp_layer(xs, nbr_pad, y_pad, basis_pad, coefficients,
                                                   self.couplings, self.paths_of_k,
                                                   self.layer_blocks)[0]
            if not split:
                return results
        else:
            y_flat = y_pad.reshape(n_out * m, self.d2)
            basis_e = basis_pad.reshape(n_out * m, 1, nb, 1)
            for b, blk in enumerate(self.blocks):
                _, mul, d1, k_total, _, _, _, ko = blk
                t, c = self._block_operands(blk, y_flat, coefficients)
                a_pad = (t.reshape(-1, d1, 1, k_total) * basis_e).reshape(n_out, m * d1,
                                                                         nb * k_total)
                x_pad = xs[self.block_irrep[b]][nbr_pad].reshape(n_out, m * d1, mul)
                s = torch.bmm(a_pad.transpose(1, 2), x_pad).reshape(n_out, nb, k_total, mul)
                c = c[:, self.paths_of_k[ko : ko + k_total], :]  # [nb, K, mul]
                results.append((s * c).sum(1))  # [n_out, K, mul]
        out: list[torch.Tensor] = [y_pad] * self.num_out
        for b in range(len(results)):
            pieces = torch.split(results[b], self.k_splits[b], dim=1)
            targets = self.k_targets[b]
            for i in range(len(targets)):
                out[targets[i]] = pieces[i].transpose(1, 2)  # [n_out, mul, d3] (a view)
        return out

    def _block_operands(
        self,
        blk: tuple[int, int, int, int, int, int, int, int],
        y_flat: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block's operands: ``t = Y @ coupling`` ``[slots, d1 * K]`` and the radial
        coefficients ``[nb, paths, mul]``."""
        _, mul, d1, k_total, c_off, w0, n_paths, _ = blk
        coupling = self.couplings[c_off : c_off + self.d2 * d1 * k_total]
        t = y_flat @ coupling.reshape(self.d2, d1 * k_total)
        c = coefficients[:, w0 : w0 + n_paths * mul].reshape(coefficients.shape[0], n_paths, mul)
        return t, c


def neighbour_slots(centre: torch.Tensor, n_out: int, n_edges: int) -> torch.Tensor:
    """The neighbour-slot map ``[n_out, M]``: row n lists the indices of the edges centred on
    node n (in edge order), padded with ``n_edges`` (the index of the zero row that
    ``pad_rows`` appends); ``M`` = the largest number of edges of a node (at least 1). All
    ``centre`` values must be < ``n_out``. The only data-dependent step of the model: runtimes
    compute it outside an exported program (O(E): a count, a stable sort, a scatter)."""
    counts = torch.bincount(centre, minlength=n_out)
    m = 1
    if n_edges > 0 and n_out > 0:
        m = max(1, int(counts.max()))
    order = torch.argsort(centre, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    c_sorted = centre[order]
    slot = torch.arange(n_edges, device=centre.device) - offsets[c_sorted]
    slots = torch.full((n_out, m), n_edges, dtype=torch.long, device=centre.device)
    slots[c_sorted, slot] = order
    return slots


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with one zero row appended: the row that padded slots point at."""
    shape = list(x.shape)
    shape[0] = 1
    return torch.cat([x, x.new_zeros(shape)])


def gather_slots(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Per-edge rows ``x`` ``[n_edges, ...]`` laid out by a neighbour-slot map ``slots``
    ``[n, M]``: ``pad_rows(x)[slots]`` (zero rows on padding), ``[n, M, ...]``, as one
    ``index_select`` (whose gradient, an ``index_add``, is cheaper than advanced indexing's)."""
    shape = list(slots.shape) + list(x.shape[1:])
    return pad_rows(x).index_select(0, slots.reshape(-1)).reshape(shape)
