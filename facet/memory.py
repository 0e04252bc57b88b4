"""Working memory of the single-pass evaluation, measured on the model itself.

The single pass (``facet.contract.FacetPotential`` below ``single_pass_edges``) keeps every
layer's activations for the backward pass, so its memory grows with the number of pairs, at a
rate set by the model's widths and dtype (float64, saved tensors per pair: Facet-S ~34 kB, the
shipped model ~9.5 kB). A runtime that knows this rate can take the faster single
pass as long as it fits a memory budget instead of stopping at one pair count for every model
(the native LAMMPS plugin does: ``pair_style facet ... single_pass_memory``).
"""

from __future__ import annotations

import torch

# peak working memory / bytes of the tensors autograd saves (the gradients of the backward pass
# come on top of the saved activations), measured as the peak RSS growth of a first single pass
# in a fresh process with the plugin's allocator settings: 1.84-1.90 for the shipped model
# (36k-86k pairs, float64 and float32), 1.36-1.41 for Facet-S (21k pairs); the larger one, so
# that the estimate errs on the safe side (tests/test_memory.py)
PEAK_OVER_SAVED = 1.9
# the same with facet.ops' fused kernels, which keep far less for the backward pass, so the
# transient buffers weigh more: 2.0-2.5 measured for the shipped model (float64, 86k pairs,
# peak RSS growth over saved bytes in repeated fresh processes); the larger, rounded up
PEAK_OVER_SAVED_FUSED = 2.7


def saved_bytes(fn, *args) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass while ``fn(*args)``
    runs (views of one storage count once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(storages.values())


def single_pass_bytes_per_pair(model) -> int:
    """Estimated peak working memory of the single pass (energy + dE/dr_ij) per pair, in bytes,
    for ``model`` in its own dtype: the growth of the saved activations between fcc crystals of
    32 and 108 atoms of the model's first element (lattice constant scaled with r_max so that
    an atom has 42 neighbours, as Cu at 5 Å), per added pair, times ``PEAK_OVER_SAVED``.

    Examples:
        >>> import facet
        >>> model = facet.build_model(facet.facet_s(["Cu"]), torch.float64)
        >>> single_pass_bytes_per_pair(model) > 10_000
        True
    """
    from ase.build import bulk

    from facet.contract import FacetPotential
    from facet.graph import build_graph

    dtype = next(model.parameters()).dtype
    elements = list(model.config.elements)
    a = 3.61 * float(model.r_max) / 5.0
    pot = FacetPotential(model, chunk_edges=0)
    # as the runtimes run it: weights without gradients (autograd keeps only what dE/dr needs)
    params = [p for p in model.parameters() if p.requires_grad]
    counts = []
    try:
        for p in params:
            p.requires_grad_(False)
        for reps in (2, 3):
            atoms = bulk(elements[0], "fcc", a=a, cubic=True).repeat(reps)
            g = build_graph(atoms, elements, model.r_max)
            args = (torch.as_tensor(g.species), torch.as_tensor(g.centre),
                    torch.as_tensor(g.neighbour), torch.as_tensor(g.rij, dtype=dtype),
                    len(atoms))
            counts.append((len(g.centre), saved_bytes(pot, *args)))
    finally:
        for p in params:
            p.requires_grad_(True)
    (p1, b1), (p2, b2) = counts
    fused = any(getattr(m, "fused", False) for m in model.modules())
    factor = PEAK_OVER_SAVED_FUSED if fused else PEAK_OVER_SAVED
    return int(round(factor * (b2 - b1) / (p2 - p1)))


def single_pass_budget() -> int:
    """Bytes a single process's single pass may take: half of this machine's available memory
    (``MemAvailable``), at most 2 GiB (the native plugin's rule for one rank); 0 where it
    cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return min(2 << 30, int(line.split()[1]) * 1024 // 2)
    except OSError:
        pass
    return 0


def memory_sized_single_pass(model, floor: int, budget: int | None = None) -> int:
    """The pairs up to which ``model``'s single pass fits ``budget`` bytes (default
    ``single_pass_budget()``), never fewer than ``floor``."""
    budget = single_pass_budget() if budget is None else budget
    return max(int(floor), int(budget // max(1, single_pass_bytes_per_pair(model))))
