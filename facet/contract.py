"""The frozen contract every runtime shares, and forces/stress from it.

``FacetPotential(species, pair_i, pair_j, rij, nlocal) -> (e_local[nlocal], dE_local/drij[P, 3])``
for all atoms a process can see (local first, then ghosts), with ``E_local = sum of e_local``.
Forces: ``F_i += dE/dr_ij``, ``F_j -= dE/dr_ij`` per pair. Virial ``W = -sum r_ij (x) dE/dr_ij``;
stress ``sigma = (1/V) sum r_ij (x) dE/dr_ij`` (eV/Å^3, ASE sign: negative under compression;
off-diagonal components from the upper triangle, as LAMMPS tallies them).

Units: Å, eV, eV/Å, eV/Å^3.
"""

from __future__ import annotations

import torch
from torch import nn

from facet.chunks import resolve_chunking
from facet.model import Facet
from facet.tensor_product import neighbour_slots


class FacetPotential(nn.Module):
    """TorchScript-able wrapper of a Facet model implementing the edge-list contract.

    Only what the local energies depend on is computed: with L layers, layer k needs outputs for
    atoms within L-1-k hops of a local atom, so atoms are ordered by hop distance and each layer
    runs on a shrinking prefix (all atoms local in ASE: no change; on a LAMMPS rank the ghost
    shell L * r_max deep is mostly left alone).

    Two evaluations, same numbers (to rounding): up to ``single_pass_edges`` pairs, one forward
    pass with autograd and one backward pass (fastest for small systems); above it, a forward
    pass without autograd that keeps only the node features between layers, then a backward pass
    that recomputes one chunk of about ``chunk_edges`` pairs of one layer at a time (working
    memory bounded by the chunk: ~50 KB instead of ~2 MB per atom for Facet-S in float64; about
    45 % more arithmetic, which on CPUs with glibc's default allocator the smaller allocations
    pay back, see benchmarks/README). ``chunk_edges <= 0``
    always takes the single pass. Both are plain attributes of the scripted module.
    """

    def __init__(self, model: Facet, chunk_edges: int | None = None,
                 single_pass_edges: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.num_layers = len(model.layers)
        # None: the CPU defaults
        self.chunk_edges, self.single_pass_edges = resolve_chunking("cpu", chunk_edges,
                                                                    single_pass_edges)

    def forward(
        self,
        species: torch.Tensor,
        pair_i: torch.Tensor,
        pair_j: torch.Tensor,
        rij: torch.Tensor,
        nlocal: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rij = rij.detach()
        if self.chunk_edges > 0 and rij.shape[0] > self.single_pass_edges:
            return self.recomputing(species, pair_i, pair_j, rij, nlocal)
        rij = rij.requires_grad_(True)
        e_local = self.local_energies(species, pair_i, pair_j, rij, nlocal)
        if rij.shape[0] == 0:
            return e_local.detach(), torch.zeros_like(rij)
        grads = torch.autograd.grad([e_local.sum()], [rij], allow_unused=True)
        g = grads[0]
        if g is None:
            g = torch.zeros_like(rij)
        return e_local.detach(), g

    def hop_pruning(
        self, species: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor, nlocal: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """``hop_pruning(species, pair_i, pair_j, nlocal, num_layers)``."""
        return hop_pruning(species, pair_i, pair_j, nlocal, self.num_layers)

    def local_energies(
        self,
        species: torch.Tensor,
        pair_i: torch.Tensor,
        pair_j: torch.Tensor,
        rij: torch.Tensor,
        nlocal: int,
    ) -> torch.Tensor:
        """Energies (eV) of the first ``nlocal`` atoms, computing only what they depend on."""
        if nlocal == species.shape[0]:
            return self.model(species, pair_i, pair_j, rij)
        sp, pi, pj, used, n_out = self.hop_pruning(species, pair_i, pair_j, nlocal)
        # one neighbour-slot map; layer k takes the rows of its n_out[k] output atoms (a prefix)
        slots = neighbour_slots(pi, n_out[0], pi.shape[0])
        return self.model.forward_prefix(sp, pj, rij[used], slots, n_out)

    def recomputing(
        self,
        species: torch.Tensor,
        pair_i: torch.Tensor,
        pair_j: torch.Tensor,
        rij: torch.Tensor,
        nlocal: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` by the chunked, recomputing evaluation (see the class docstring)."""
        m = self.model
        chunk = self.chunk_edges
        sp, pi, pj, used, n_out = self.hop_pruning(species, pair_i, pair_j, nlocal)
        by_centre = torch.argsort(pi, stable=True)
        pi, pj, used = pi[by_centre], pj[by_centre], used[by_centre]
        x = rij[used]
        # layer k uses the edges centred on its n_out[k] outputs: a prefix of the sorted edges
        n_edges = [int((pi < n_out[k]).sum()) for k in range(self.num_layers)]
        hs = [m.embed(sp).detach()]
        for k in range(self.num_layers):
            e = n_edges[k]
            hs.append(m.layer_forward_chunked(k, hs[k], x[:e], pi[:e], pj[:e], n_out[k], chunk))
        h_last = hs[-1].detach().requires_grad_(True)
        e_local = m.readout(h_last, sp[:nlocal])
        g_last = torch.autograd.grad([e_local.sum()], [h_last], allow_unused=True)[0]
        g = g_last if g_last is not None else torch.zeros_like(h_last)
        g_x = torch.zeros_like(x)
        for k in range(self.num_layers - 1, -1, -1):
            e = n_edges[k]
            g_rij, g = m.layer_backward_chunked(k, hs[k], x[:e], pi[:e], pj[:e], n_out[k], g,
                                                chunk, k > 0)
            g_x[:e] += g_rij
        return e_local.detach(), torch.zeros_like(rij).index_put_((used,), g_x)


def hop_pruning(
    species: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor, nlocal: int,
    n_layers: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Atoms renumbered by hop distance from the local ones (locals keep 0..nlocal-1):
    ``(species, centre, neighbour, used, n_out)`` with the edges ``used`` (indices into
    the pair list) whose centre any layer needs, renumbered, and ``n_out[k]`` the number of
    atoms layer k must output (a prefix): with L layers, layer k needs the atoms within
    L-1-k hops of a local atom."""
    n = species.shape[0]
    if nlocal == n:
        used = torch.arange(pair_i.shape[0], device=species.device)
        return species, pair_i, pair_j, used, [n] * n_layers
    hop = torch.full((n,), n_layers, dtype=torch.long, device=species.device)
    hop[:nlocal] = 0
    for d in range(1, n_layers):
        reached = pair_j[hop[pair_i] == d - 1]
        hop[reached] = torch.clamp(hop[reached], max=d)
    order = torch.argsort(hop, stable=True)  # locals keep indices 0..nlocal-1
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=species.device)
    within: list[int] = torch.cumsum(torch.bincount(hop, minlength=n_layers + 1), 0).tolist()
    # within[k] = number of atoms with hop <= k; layer k outputs those with hop <= L-1-k
    pi = rank[pair_i]
    used = torch.nonzero(pi < within[n_layers - 1]).squeeze(1)
    n_out = [int(within[n_layers - 1 - k]) for k in range(n_layers)]
    return species[order], pi[used], rank[pair_j][used], used, n_out


def forces_from_pair_gradients(
    dE_drij: torch.Tensor, centre: torch.Tensor, neighbour: torch.Tensor, n_atoms: int
) -> torch.Tensor:
    """Atomic forces (eV/Å) from dE/dr_ij: ``F_i += g_ij``, ``F_j -= g_ij``."""
    f = torch.zeros(n_atoms, 3, dtype=dE_drij.dtype, device=dE_drij.device)
    f = f.index_add(0, centre, dE_drij)
    return f.index_add(0, neighbour, -dE_drij)


def virial_from_pair_gradients(
    rij: torch.Tensor,
    dE_drij: torch.Tensor,
    edge_structure: torch.Tensor | None = None,
    n_structures: int = 1,
) -> torch.Tensor:
    """``W_ab = sum r_ij,a dE/dr_ij,b`` (eV), i.e. dE/d(strain) = -virial: ``[3, 3]``, or
    ``[n_structures, 3, 3]`` summed per structure when ``edge_structure`` [n_edges] says which
    structure each edge belongs to (a batch of disjoint structures).

    W is symmetric for an exactly rotation-invariant energy; the S2-grid layer makes it so only
    up to grid aliasing. Stresses everywhere (ASE calculator, training, LAMMPS' ``v_tally``) use
    the upper triangle ``W_xy, W_xz, W_yz`` for the off-diagonal components, so that every
    runtime reports the same numbers.
    """
    if edge_structure is None:
        return rij.transpose(0, 1) @ dE_drij
    pair = (rij.unsqueeze(2) * dE_drij.unsqueeze(1)).reshape(-1, 9)
    return dE_drij.new_zeros(n_structures, 9).index_add(0, edge_structure, pair).reshape(-1, 3, 3)


def upper_symmetric(w: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is that of ``w`` (LAMMPS' virial convention)."""
    upper = torch.triu(w)
    return upper + torch.triu(w, 1).transpose(-1, -2)


def energy_forces_stress(
    model: Facet,
    species: torch.Tensor,
    centre: torch.Tensor,
    neighbour: torch.Tensor,
    rij: torch.Tensor,
    volume: float | torch.Tensor | None = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-atom energies, total energy, forces and (if ``volume``) stress of one structure or a
    batch of disjoint structures (then pass per-structure sums yourself).

    ``create_graph=True`` keeps the graph for training on forces/stress.
    """
    if not rij.requires_grad:
        rij = rij.requires_grad_(True)
    energies = model(species, centre, neighbour, rij)
    total = energies.sum()
    n = species.shape[0]
    if rij.shape[0] == 0:
        g = torch.zeros_like(rij)
    else:
        (g,) = torch.autograd.grad(total, rij, create_graph=create_graph)
    forces = forces_from_pair_gradients(g, centre, neighbour, n)
    stress = None
    if volume is not None:
        stress = upper_symmetric(virial_from_pair_gradients(rij, g)) / volume
    return energies, total, forces, stress
