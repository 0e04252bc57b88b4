"""Irrep features as component-major blocks, the layout between Facet's layers.

e3nn stores the features of ``irreps = mul_1 x ir_1 + ...`` as one ``[n, irreps.dim]`` array,
each irrep's block multiplicity-major (``[n, mul, d]`` flattened). Every linear map of an irrep
block multiplies its ``mul`` axis, so it needs the block component-major (``[n, d, mul]``, rows of
``mul`` channels): in e3nn's layout that is a transposition and a copy for every block of every
map, and a concatenation (with its gradient, a split) for every layer's output. Between layers
Facet keeps one contiguous ``[n, d, mul]`` tensor per irrep instead and converts only where a
caller needs e3nn's layout (``FacetLayer.forward_slots``, ``Facet.layer``). Runtimes that only
move rows of node features between layers (the halo exchanges of LAMMPS' plugin and ML-IAP
KOKKOS path) use ``Facet.layer_padded``, whose features are rows in the component-major layout
(each irrep's ``[d, mul]`` block flattened): no transposition at the layer boundaries either.
For scalars (the embedding, the last layer) both layouts coincide.
"""

from __future__ import annotations

import torch
from e3nn import o3


def to_dmajor(h: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Features ``[n, irreps.dim]`` (e3nn layout: mul-major blocks) -> one component-major
    view ``[n, d, mul]`` per irrep (``shapes``: ``(mul, d)`` per irrep)."""
    n = h.shape[0]
    parts = torch.split(h, [mul * d for mul, d in shapes], dim=1)
    return [parts[i].reshape(n, shapes[i][0], shapes[i][1]).transpose(1, 2)
            for i in range(len(parts))]


def from_dmajor(blocks: list[torch.Tensor]) -> torch.Tensor:
    """One component-major block ``[n, d, mul]`` per irrep -> ``[n, irreps.dim]`` (e3nn
    layout); a single block with d = 1 (scalars) as a view."""
    n = blocks[0].shape[0]
    flat = [b.transpose(1, 2).reshape(n, b.shape[1] * b.shape[2]) for b in blocks]
    if len(flat) == 1:
        return flat[0]
    return torch.cat(flat, dim=1)


def irrep_shapes(irreps: o3.Irreps) -> list[tuple[int, int]]:
    """``(mul, d)`` of every irrep of ``irreps``."""
    return [(mul, ir.dim) for mul, ir in o3.Irreps(irreps)]


def split_component_major(h: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Rows in the component-major layout (each irrep's ``[d, mul]`` block flattened, blocks
    side by side) -> one ``[n, d, mul]`` view per irrep, without a copy (its rows strided by
    the full width: the fused tensor-product kernel reads them in place)."""
    n = h.shape[0]
    parts = torch.split(h, [mul * d for mul, d in shapes], dim=1)
    return [parts[i].reshape(n, shapes[i][1], shapes[i][0]) for i in range(len(parts))]


def join_component_major(blocks: list[torch.Tensor]) -> torch.Tensor:
    """``[n, d, mul]`` blocks -> rows in the component-major layout; for scalars only (d = 1)
    the same as e3nn's layout."""
    n = blocks[0].shape[0]
    flat = [b.reshape(n, b.shape[1] * b.shape[2]) for b in blocks]
    if len(flat) == 1:
        return flat[0]
    return torch.cat(flat, dim=1)
