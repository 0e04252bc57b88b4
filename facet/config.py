"""Model configuration: one dataclass, a few named presets.

Units: lengths in Å, energies in eV.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ase.data import atomic_numbers

#: Default S2 quadrature of new configs (checkpoints without the field load as "soft").
S2_DEFAULT_GRID = "lebedev"
#: Default resolution of each kind: (beta, alpha) points, or (degree,) for Lebedev.
S2_DEFAULT_RES: dict[str, tuple[int, ...]] = {
    "soft": (18, 17),
    "gauss": (12, 24),
    "lebedev": (35,),
}


@dataclass
class FacetConfig:
    """Hyper-parameters of a Facet model.

    Attributes:
        elements: chemical symbols the model knows; species index = position in this list.
        r_max: cutoff radius of the radius graph and of the envelope (Å).
        embed_dim: width of the species embedding (scalars, ``embed_dim x 0e``).
        hidden_irreps: e3nn irreps of each equivariant layer's output, one entry per layer.
        final_scalars: width of the last, scalar-only layer (``final_scalars x 0e``).
        sh_lmax: maximum degree of the edge spherical harmonics (parity ``(-1)^l``).
        radial_basis: ``"bspline"`` (learnable cubic B-splines, the paper's choice) or
            ``"sinc"`` (the reference code's enveloped sinc-Bessel basis, for comparison).
        num_radial: number of B-spline coefficients (knots) or sinc functions.
        envelope_p: exponent of the polynomial cutoff envelope (C^2 at r_max for any p >= 2).
        avg_num_neighbors: normalisation of the neighbour sum (taken from training data).
        radial_power: the sum is divided by ``avg_num_neighbors ** radial_power``.
        s2_grid: quadrature of the S2 mixing layer's spherical grid: ``"soft"`` (e3nn's
            equiangular grid), ``"gauss"`` (Gauss-Legendre in cos(beta) x uniform alpha) or
            ``"lebedev"`` (see ``facet.s2``). Checkpoints written before this option existed
            load as ``"soft"``.
        s2_res: the grid's resolution: ``(beta, alpha)`` points for ``"soft"`` and ``"gauss"``,
            ``(degree,)`` for ``"lebedev"``; None gives the kind's default
            (``S2_DEFAULT_RES``).
        s2_mlp_hidden: hidden widths of the per-grid-point MLP.
        s2_heads: the grid channels are split into this many heads sharing one MLP.
        s2_identity: replace the grid MLP by the identity (exactly equivariant; for tests).
        final_mlp_layers: depth of the plain MLP of the last, scalar-only layer.
        resid_init: initial value of the per-channel residual gain (0 = ReZero start).
        layer_norm: ``"joint"`` (one RMS over scalars and l > 0 features; smooth near
            symmetric sites) or ``"separate"`` (the authors' code; see ``E3LayerNorm``).
            Checkpoints written before this option existed load as ``"separate"``.
        min_distance: pairs closer than this (Å) are rejected as overlapping atoms.
    """

    elements: list[str]
    r_max: float = 5.0
    embed_dim: int = 64
    hidden_irreps: list[str] = field(default_factory=lambda: ["128x0e+64x1o+32x2e"] * 2)
    final_scalars: int = 64
    sh_lmax: int = 2
    radial_basis: str = "bspline"
    num_radial: int = 8
    envelope_p: int = 6
    avg_num_neighbors: float = 40.0
    radial_power: float = 0.7
    s2_grid: str = S2_DEFAULT_GRID
    s2_res: tuple[int, ...] | None = None
    s2_mlp_hidden: list[int] = field(default_factory=lambda: [16])
    s2_heads: int = 2
    s2_identity: bool = False
    final_mlp_layers: int = 3
    resid_init: float = 0.0
    layer_norm: str = "joint"
    min_distance: float = 0.1

    def __post_init__(self) -> None:
        self.elements = list(self.elements)
        if not self.elements:
            raise ValueError("FacetConfig.elements is empty: give the chemical symbols to model")
        unknown = [e for e in self.elements if e not in atomic_numbers]
        if unknown:
            raise ValueError(f"FacetConfig.elements has unknown chemical symbols: {unknown}")
        if len(set(self.elements)) != len(self.elements):
            raise ValueError(f"FacetConfig.elements has duplicates: {self.elements}")
        if self.radial_basis not in ("bspline", "sinc"):
            raise ValueError(f"radial_basis must be 'bspline' or 'sinc', not {self.radial_basis!r}")
        if self.radial_basis == "bspline" and self.num_radial < 4:
            raise ValueError("a cubic B-spline radial basis needs num_radial >= 4")
        if self.r_max <= 0:
            raise ValueError(f"r_max must be positive, got {self.r_max}")
        if self.layer_norm not in ("joint", "separate"):
            raise ValueError(f"layer_norm must be 'joint' or 'separate', not {self.layer_norm!r}")
        if self.s2_grid not in S2_DEFAULT_RES:
            raise ValueError(
                f"s2_grid must be one of {sorted(S2_DEFAULT_RES)}, not {self.s2_grid!r}"
            )
        if self.s2_res is None:
            self.s2_res = S2_DEFAULT_RES[self.s2_grid]
        self.s2_res = tuple(int(r) for r in self.s2_res)
        want = 1 if self.s2_grid == "lebedev" else 2
        if len(self.s2_res) != want:
            raise ValueError(
                f"s2_res {list(self.s2_res)} does not fit s2_grid={self.s2_grid!r}: give "
                + ("(degree,)" if want == 1 else "(beta, alpha)")
                + " (a config written for the old SOFT grid needs s2_grid='soft')"
            )

    @property
    def num_interactions(self) -> int:
        """Message-passing layers: every hidden layer plus the final scalar layer."""
        return len(self.hidden_irreps) + 1

    @property
    def receptive_field(self) -> float:
        """Distance (Å) from which an atom's energy can still feel another atom."""
        return self.num_interactions * self.r_max

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["s2_res"] = list(self.s2_res)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FacetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown FacetConfig fields: {sorted(extra)}")
        d = dict(d)
        d.setdefault("layer_norm", "separate")  # stored before the option existed
        d.setdefault("s2_grid", "soft")  # likewise
        return cls(**d)


def facet_s(elements: list[str], **overrides: Any) -> FacetConfig:
    """Facet-S: the paper's small model (2 x 128x0e+64x1o+32x2e, then 64x0e; ~250k params)."""
    return FacetConfig(elements=elements, **overrides)


def facet_tiny(elements: list[str], **overrides: Any) -> FacetConfig:
    """A tiny two-interaction model for fast tests (seconds to build and run)."""
    kw: dict[str, Any] = dict(
        r_max=4.0,
        embed_dim=8,
        hidden_irreps=["8x0e+4x1o+2x2e"],
        final_scalars=8,
        num_radial=8,
        avg_num_neighbors=12.0,
        s2_mlp_hidden=[8],
        s2_heads=1,
        final_mlp_layers=2,
    )
    kw.update(overrides)
    return FacetConfig(elements=elements, **kw)


PRESETS = {"facet-s": facet_s, "tiny": facet_tiny}


def preset(name: str, elements: list[str], **overrides: Any) -> FacetConfig:
    """Build a named config (``facet-s`` or ``tiny``)."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory(elements, **overrides)
