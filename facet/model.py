"""The Facet interatomic potential (Miklaucic et al. 2025, arXiv 2509.08418), in PyTorch + e3nn.

Species embedding -> L equivariant layers (spline-weighted tensor-product messages, S2-grid MLP
mixing, equivariant layer norm with a gated residual) -> a scalar-only last layer -> linear
readout -> per-species scale and shift. Everything is a function of the edge list alone (no cell,
no whole-structure statistic), so any subset of atoms with its ghosts out to the receptive field
gets exactly the serial per-atom energies: that is what makes LAMMPS domain decomposition exact.

Units: r_ij in Å, energies in eV.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Optional

import torch
from e3nn import o3
from torch import nn

from facet.blocks import from_dmajor, join_component_major, split_component_major
from facet.chunks import row_chunks
from facet.config import FacetConfig
from facet.layers import FacetLayer
from facet.tensor_product import gather_slots, neighbour_slots, pad_rows


class Facet(nn.Module):
    """Per-atom energies from species and edges.

    Call ``model(species, centre, neighbour, rij)``: species ``[n]`` (indices into
    ``config.elements``), edge centres and neighbours ``[n_edges]`` (int64), ``rij = x_j - x_i``
    ``[n_edges, 3]`` (Å). Returns per-atom energies ``[n]`` (eV) for every node; the energy of a
    node is exact when all nodes within ``num_interactions - 1`` hops carry complete edge lists.

    Layer-by-layer entry points (``embed``, ``edge_features``, ``layer``, ``readout``) let a
    runtime exchange node features between layers (LAMMPS KOKKOS path).
    """

    def __init__(self, config: FacetConfig) -> None:
        super().__init__()
        self.config = config
        self.num_species = len(config.elements)
        self.r_max = float(config.r_max)
        self.irreps_sh = o3.Irreps.spherical_harmonics(config.sh_lmax)
        self.spherical_harmonics = o3.SphericalHarmonics(
            self.irreps_sh, normalize=True, normalization="component"
        )
        self.embedding = nn.Parameter(torch.randn(self.num_species, config.embed_dim))
        chain = [
            o3.Irreps(f"{config.embed_dim}x0e"),
            *[o3.Irreps(h) for h in config.hidden_irreps],
            o3.Irreps(f"{config.final_scalars}x0e"),
        ]
        for irreps in chain[1:-1]:
            if irreps[0].ir != o3.Irrep("0e") or irreps.lmax == 0:
                raise ValueError(
                    f"hidden irreps {irreps} must start with scalars and contain l > 0 "
                    "(e.g. 128x0e+64x1o+32x2e)"
                )
        self.irreps_chain = [str(i) for i in chain]
        self.layers = nn.ModuleList(
            [
                FacetLayer(a, b, self.irreps_sh, config)
                for a, b in zip(chain[:-1], chain[1:], strict=True)
            ]
        )
        self.feature_dims = [irreps.dim for irreps in chain]
        # every layer's radial basis is the same parameter-free function of r (cubic
        # B-splines, one cutoff and envelope): forward_prefix evaluates it once for all layers
        self.shared_radial_basis = config.radial_basis == "bspline"
        self.readout_weight = nn.Parameter(
            torch.randn(config.final_scalars, 1) / math.sqrt(config.final_scalars)
        )
        # E_i = scale[Z_i] * e_i + shift[Z_i]; shift is fitted to training energies (eV/atom).
        self.species_scale = nn.Parameter(torch.ones(self.num_species))
        self.species_shift = nn.Parameter(torch.zeros(self.num_species))

    @property
    def num_interactions(self) -> int:
        return len(self.layers)

    @torch.jit.export
    def embed(self, species: torch.Tensor) -> torch.Tensor:
        """Layer-0 node features ``[n, embed_dim]``."""
        return self.embedding[species]

    @torch.jit.export
    def edge_features(self, rij: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Spherical harmonics ``Y(r_ij)`` (component-normalised) and distances ``|r_ij|`` (Å)."""
        r = torch.linalg.vector_norm(rij, dim=1)
        return self.spherical_harmonics(rij), r

    @torch.jit.export
    def layer(
        self,
        index: int,
        h: torch.Tensor,
        sh: torch.Tensor,
        r: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        n_out: int = -1,
        row_start: int = 0,
    ) -> torch.Tensor:
        """Apply layer ``index``: new features of the ``n_out`` nodes from ``row_start`` on (all
        the rest if negative) from ``h`` of all nodes; edges must be centred on those nodes, with
        ``centre`` counted from ``row_start``."""
        for i, layer in enumerate(self.layers):
            if i == index:
                return layer(h, sh, r, centre, neighbour, n_out, row_start)
        raise IndexError("layer index out of range")

    @torch.jit.export
    def edge_slots(
        self,
        sh: torch.Tensor,
        r: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        n_out: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:  # noqa: UP045
        """The per-slot edge data that every layer of a graph shares, computed once for
        ``layer_padded`` (instead of once per ``layer`` call): edges centred on nodes
        ``0..n_out-1``, ``sh`` and ``r`` from ``edge_features``. Returns ``(slots [n_out, M],
        neighbour rows [n_out, M], harmonics [n_out, M, d], radial basis [n_out, M, nb])``, the
        basis None unless ``shared_radial_basis``."""
        slots = neighbour_slots(centre, n_out, r.shape[0])
        return (slots, gather_slots(neighbour, slots), gather_slots(sh, slots),
                self.slot_basis(r, slots))

    def slot_basis(self, r: torch.Tensor, slots: torch.Tensor) -> Optional[torch.Tensor]:  # noqa: UP045
        """The radial basis all layers share, per slot (None unless ``shared_radial_basis``)."""
        if self.shared_radial_basis:
            return gather_slots(self.layers[0].interaction.radial.enveloped_basis(r), slots)
        return None

    @torch.jit.export
    def layer_padded(
        self,
        index: int,
        h: torch.Tensor,
        nbr_pad: torch.Tensor,
        y_pad: torch.Tensor,
        r: torch.Tensor,
        slots: torch.Tensor,
        basis_pad: Optional[torch.Tensor],  # noqa: UP045
    ) -> torch.Tensor:
        """``layer(index, h, ...)`` for the nodes ``0..slots.shape[0]-1`` from ``edge_slots``'
        data (``r``: per edge, used where the basis is not shared), with the node features
        ``h`` and the result as rows in the component-major layout (``facet.blocks``; e3nn's
        for the scalar embedding and the last layer's scalars): what a runtime that exchanges
        rows between layers calls, embed -> layer_padded 0, 1, ... -> readout."""
        for i, layer in enumerate(self.layers):
            if i == index:
                hs = split_component_major(h, layer.in_shapes)
                return join_component_major(layer.forward_dmajor(hs, nbr_pad, y_pad, r, slots,
                                                                 0, basis_pad))
        raise IndexError("layer index out of range")

    @torch.jit.export
    def layer_forward_chunked(
        self,
        index: int,
        h: torch.Tensor,
        rij: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        n_out: int,
        chunk_edges: int,
    ) -> torch.Tensor:
        """``layer(index, ...)`` for nodes ``0..n_out`` without autograd, in chunks of about
        ``chunk_edges`` edges. Edges must be sorted by ``centre`` (all < n_out); ``rij`` in Å."""
        with torch.no_grad():
            counts = torch.bincount(centre, minlength=n_out)
            rows, edges = row_chunks(counts, chunk_edges)
            outs: list[torch.Tensor] = []
            for c in range(len(rows) - 1):
                a, b, ea, eb = rows[c], rows[c + 1], edges[c], edges[c + 1]
                if b > a:
                    sh, r = self.edge_features(rij[ea:eb])
                    outs.append(self.layer(index, h, sh, r, centre[ea:eb] - a,
                                           neighbour[ea:eb], b - a, a))
            if len(outs) == 0:
                return h.new_zeros(0, self.feature_dims[index + 1])
            return torch.cat(outs)

    @torch.jit.export
    def layer_backward_chunked(
        self,
        index: int,
        h: torch.Tensor,
        rij: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        n_out: int,
        grad_out: torch.Tensor,
        chunk_edges: int,
        need_grad_h: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vector-Jacobian product of ``layer_forward_chunked`` with ``grad_out`` [n_out, d]:
        ``(grad_rij [n_edges, 3], grad_h [h rows, d_in])`` (``grad_h`` empty unless
        ``need_grad_h``). Recomputes one chunk at a time with autograd, so only one chunk's
        activations are alive; each chunk reads a copy of the rows of ``h`` it needs (its own
        and its edges' neighbours), so the work per chunk does not grow with the system."""
        counts = torch.bincount(centre, minlength=n_out)
        rows, edges = row_chunks(counts, chunk_edges)
        grad_rij = torch.zeros_like(rij)
        grad_h = torch.zeros_like(h) if need_grad_h else h.new_zeros(0, h.shape[1])
        for c in range(len(rows) - 1):
            a, b, ea, eb = rows[c], rows[c + 1], edges[c], edges[c + 1]
            if b == a:
                continue
            nb = neighbour[ea:eb]
            x = rij[ea:eb].detach().requires_grad_(True)
            # the rows this chunk reads: its own and its edges' neighbours, renumbered
            rows_read, inverse = torch.unique(
                torch.cat([torch.arange(a, b, device=nb.device), nb]), return_inverse=True
            )
            h_c = h[rows_read].detach().requires_grad_(need_grad_h)
            sh, r = self.edge_features(x)
            start = int(inverse[0])  # rows a..b-1 stay consecutive after renumbering
            out = self.layer(index, h_c, sh, r, centre[ea:eb] - a, inverse[b - a :], b - a,
                             start)
            g_out: list[torch.Tensor | None] = [grad_out[a:b]]
            if need_grad_h:
                grads = torch.autograd.grad([out], [x, h_c], g_out, allow_unused=True)
                g_h = grads[1]
                if g_h is not None:
                    grad_h.index_add_(0, rows_read, g_h)
            else:
                grads = torch.autograd.grad([out], [x], g_out, allow_unused=True)
            g_x = grads[0]
            if g_x is not None:
                grad_rij[ea:eb] = g_x
        return grad_rij, grad_h

    @torch.jit.export
    def readout(self, h: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (eV) from the last layer's scalars."""
        e = (h @ self.readout_weight).squeeze(-1)
        return e * self.species_scale[species] + self.species_shift[species]

    def forward(
        self,
        species: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        rij: torch.Tensor,
    ) -> torch.Tensor:
        n = species.shape[0]
        slots = neighbour_slots(centre, n, rij.shape[0])
        n_out: list[int] = []
        for _ in range(len(self.layers)):
            n_out.append(n)
        return self.forward_prefix(species, neighbour, rij, slots, n_out)

    def forward_prefix(
        self,
        species: torch.Tensor,
        neighbour: torch.Tensor,
        rij: torch.Tensor,
        slots: torch.Tensor,
        n_out: list[int],
    ) -> torch.Tensor:
        """``forward_slots`` where layer k's slot map is the first ``n_out[k]`` rows of one
        map ``slots`` ``[n_out[0], M]`` (non-increasing ``n_out``; what hop pruning and a
        whole structure give): the per-slot edge data (neighbour rows, harmonics and, with
        ``shared_radial_basis``, the radial basis) are gathered once for all layers instead of
        once per layer. Same numbers as ``forward_slots``."""
        sh, r = self.edge_features(rij)
        nbr = gather_slots(neighbour, slots)
        y = gather_slots(sh, slots)
        basis = self.slot_basis(r, slots)
        # node features as component-major blocks [n, d, mul] per irrep between the layers
        # (FacetLayer.forward_dmajor): the embedding is one scalar block
        hs = [self.embed(species).unsqueeze(1)]
        for k, layer in enumerate(self.layers):
            m = n_out[k]
            if m == slots.shape[0]:  # whole tensors: no slice (a slice's gradient is a fill)
                hs = layer.forward_dmajor(hs, nbr, y, r, slots, 0, basis)
            else:
                b_k: Optional[torch.Tensor] = None  # noqa: UP045 (TorchScript)
                if basis is not None:
                    b_k = basis[:m]
                hs = layer.forward_dmajor(hs, nbr[:m], y[:m], r, slots[:m], 0, b_k)
        h = from_dmajor(hs)
        return self.readout(h, species[: h.shape[0]])

    def forward_slots(
        self,
        species: torch.Tensor,
        neighbour: torch.Tensor,
        rij: torch.Tensor,
        slots: list[torch.Tensor],
    ) -> torch.Tensor:
        """Per-atom energies from neighbour-slot maps instead of edge centres (no
        data-dependent shapes: what ``facet.aoti`` exports). ``slots[k]`` ``[n_k, M]``
        (``facet.tensor_product.neighbour_slots``) lists, for each of the ``n_k`` nodes whose
        features layer k computes, the indices of its edges, padded with ``n_edges``;
        ``n_0 >= n_1 >= ...`` (hop pruning: layer k outputs the first ``n_k`` nodes; usually
        row prefixes of one map). Returns the energies of the first ``n_{L-1}`` nodes."""
        sh, r = self.edge_features(rij)
        nbr = pad_rows(neighbour)
        y = pad_rows(sh)
        h = self.embed(species)
        for k, layer in enumerate(self.layers):
            s = slots[k]
            h = layer.forward_slots(h, nbr[s], y[s], r, s)
        return self.readout(h, species[: h.shape[0]])

    def energy_forces_slots(
        self,
        species: torch.Tensor,
        neighbour: torch.Tensor,
        rij: torch.Tensor,
        slots: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e, dE/drij)``: the energies of ``forward_slots`` and the gradient of their sum
        with respect to ``rij`` (the whole contract in one pass; ``facet.aoti``'s
        ``energy_forces`` program)."""
        rij = rij.detach().requires_grad_(True)
        e = self.forward_slots(species, neighbour, rij, slots)
        (g,) = torch.autograd.grad([e.sum()], [rij], allow_unused=True)
        if g is None:
            g = torch.zeros_like(rij)
        return e.detach(), g

    def layer_slots(
        self,
        index: int,
        h: torch.Tensor,
        neighbour: torch.Tensor,
        rij: torch.Tensor,
        slots: torch.Tensor,
    ) -> torch.Tensor:
        """Layer ``index`` from a neighbour-slot map: new features ``[n_out, d_out]`` of the
        first ``n_out = slots.shape[0]`` rows of ``h`` (``[n_in, d_in]``, all nodes the edges
        reach); ``neighbour`` and ``rij`` per edge, ``slots`` indexes them (padding
        ``n_edges``). ``facet.aoti``'s ``layer{k}`` program."""
        sh, r = self.edge_features(rij)
        return self.layers[index].forward_slots(h, gather_slots(neighbour, slots),
                                                gather_slots(sh, slots), r, slots)

    def layer_slots_vjp(
        self,
        index: int,
        h: torch.Tensor,
        neighbour: torch.Tensor,
        rij: torch.Tensor,
        slots: torch.Tensor,
        grad_out: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vector-Jacobian product of ``layer_slots`` with ``grad_out`` ``[n_out, d_out]``:
        ``(grad_h [n_in, d_in], grad_rij [n_edges, 3])``; recomputes the layer's forward
        (``facet.aoti``'s ``layer{k}_vjp`` program, the recomputing evaluation's backward)."""
        h = h.detach().requires_grad_(True)
        rij = rij.detach().requires_grad_(True)
        out = self.layer_slots(index, h, neighbour, rij, slots)
        gh, gr = torch.autograd.grad([out], [h, rij], [grad_out], allow_unused=True)
        return (torch.zeros_like(h) if gh is None else gh,
                torch.zeros_like(rij) if gr is None else gr)

    def readout_vjp(self, h: torch.Tensor,
                    species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e, d(sum e)/dh)``: per-atom energies from the last layer's features and the
        gradient that starts the backward pass (``facet.aoti``'s ``readout`` program)."""
        h = h.detach().requires_grad_(True)
        e = self.readout(h, species)
        (g,) = torch.autograd.grad([e.sum()], [h])
        return e.detach(), g


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(config: FacetConfig, dtype: torch.dtype = torch.float64) -> Facet:
    """Build a model whose parameters *and constants* are in ``dtype``.

    e3nn computes Clebsch-Gordan coefficients and grid matrices in float64 and stores them in the
    default dtype at construction, so build under the target dtype instead of casting afterwards
    (a float32-built model cast to float64 keeps float32-rounded constants).
    """
    with default_dtype(dtype):
        return Facet(config)


def copy_parameters(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy ``state`` (name -> tensor) into ``model``'s parameters, cast to their dtype. Returns
    the names that are missing on either side or differ in shape; then nothing is copied."""
    params = dict(model.named_parameters())
    problems = sorted(set(params) ^ set(state))
    problems += [k for k in params if k in state and params[k].shape != state[k].shape]
    if not problems:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k])
    return problems


def with_dtype(model: Facet, dtype: torch.dtype) -> Facet:
    """``model`` in ``dtype``: the same object if it is already, else a copy rebuilt in ``dtype``
    (constants recomputed there, weights cast), in eval mode, with its provenance."""
    if next(model.parameters()).dtype == dtype:
        return model
    copy = build_model(model.config, dtype)
    problems = copy_parameters(copy, dict(model.named_parameters()))
    assert not problems, problems  # same config, same parameters
    copy.provenance = getattr(model, "provenance", {})  # type: ignore[attr-defined]
    return copy.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
