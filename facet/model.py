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

import torch
from e3nn import o3
from torch import nn

from facet.config import FacetConfig
from facet.layers import FacetLayer


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
    ) -> torch.Tensor:
        """Apply layer ``index``: new features of the first ``n_out`` nodes (all if negative)
        from ``h`` of all nodes; edges must be centred on those first ``n_out`` nodes."""
        for i, layer in enumerate(self.layers):
            if i == index:
                return layer(h, sh, r, centre, neighbour, n_out)
        raise IndexError("layer index out of range")

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
        sh, r = self.edge_features(rij)
        h = self.embed(species)
        for layer in self.layers:
            h = layer(h, sh, r, centre, neighbour)
        return self.readout(h, species)


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
