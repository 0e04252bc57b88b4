"""Splitting a layer's work into chunks of output rows with a bounded number of edges.

Used by the recomputing evaluation (``Facet.layer_forward_chunked`` /
``Facet.layer_backward_chunked``, ``FacetPotential``): instead of keeping every layer's
activations for the backward pass (~2 MB per atom for Facet-S in float64), the forward pass runs
without autograd, keeps only the node features between layers, and the backward pass recomputes
one chunk of one layer at a time. Memory then grows with the chunk, not with the system, and the
small tensors avoid the page faults of large allocations, which under glibc's default allocator
pays for the second forward pass on CPUs from a few hundred atoms on (see benchmarks/README).
"""

from __future__ import annotations

import torch


def row_chunks(counts: torch.Tensor, chunk_edges: int) -> tuple[list[int], list[int]]:
    """Split rows ``0..n`` with ``counts[i]`` edges each (edges sorted by row) into chunks of
    about ``chunk_edges`` edges: a chunk ends at the first row that starts at or after a
    multiple of ``chunk_edges``, so it exceeds the budget by less than its largest row (rows are
    never split). Vectorised: no loop over rows.

    Returns ``(rows, edges)``: chunk ``c`` covers rows ``rows[c]:rows[c+1]`` and edges
    ``edges[c]:edges[c+1]``. ``chunk_edges <= 0`` gives one chunk.
    """
    n = counts.shape[0]
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1]) if n > 0 else 0
    rows = [0]
    if chunk_edges > 0 and total > chunk_edges:
        targets = torch.arange(chunk_edges, total, chunk_edges, device=counts.device)
        cuts = torch.unique(torch.searchsorted(starts, targets))
        cut_rows: list[int] = cuts.tolist()
        for c in cut_rows:
            if 0 < c < n and c > rows[-1]:
                rows.append(c)
    rows.append(n)
    edge_starts = torch.cat([starts, torch.full((1,), total, dtype=starts.dtype,
                                                device=starts.device)])
    edges: list[int] = edge_starts[torch.tensor(rows, dtype=torch.long,
                                                device=counts.device)].tolist()
    return rows, edges


def default_chunking(device: str, fused: bool = False) -> tuple[int, int]:
    """``(chunk_edges, single_pass_edges)`` for a device type (``"cpu"`` or ``"cuda"``).

    CPU: measured on Facet-S (benchmarks/README): chunks of ~4k pairs (~100 atoms) keep every
    tensor small; the single pass is kept up to ~16k pairs (~400 atoms), where it is faster.
    With ``facet.ops``' fused kernels (``fused``) the single pass keeps 9-15x less for its
    backward pass (Facet-S float64: 4.4 instead of 65 kB per pair) and is 1.7x faster than
    the recomputing evaluation at 1372-2048 atoms: kept up to 2^18 pairs (~6000 atoms, ~1.2 GB
    for Facet-S in float64, about what 16384 pairs took without the kernels, per rank), then
    chunks of 32768 pairs (~140 MB; at 8000 atoms 1.16-1.26x faster than chunks of 4096, the
    single pass another 1.2-1.3x).
    CUDA: not measured; large chunks (~6k atoms) so that kernel launches stay few.
    """
    if device.startswith("cuda"):
        return (1 << 18, 1 << 18)
    return (32768, 1 << 18) if fused else (4096, 16384)


def resolve_chunking(device: str, chunk_edges: int | None = None,
                     single_pass_edges: int | None = None,
                     fused: bool = False) -> tuple[int, int]:
    """``(chunk_edges, single_pass_edges)``: the given values, each None replaced by the
    device's default (``default_chunking``). ``chunk_edges <= 0`` means always a single pass."""
    default = default_chunking(device, fused)
    return (default[0] if chunk_edges is None else int(chunk_edges),
            default[1] if single_pass_edges is None else int(single_pass_edges))
