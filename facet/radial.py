"""Radial functions of the interatomic distance: learnable splines and the cutoff envelope.

Facet's claim is that learnable splines of r replace the radial MLPs of MACE/NequIP/SevenNet.
Here a radial function is ``w(r) = envelope(r) * sum_k B_k(r) C[k]`` with ``B_k`` uniform cubic
B-splines on [0, r_max] (compact support: four are non-zero at any r) and ``C`` a learnable
``[num_basis, num_weights]`` table, one column per tensor-product weight.

Units: r and r_max in Å; sinc frequencies in 1/Å.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff ``u(r)``: 1 at r = 0, 0 for r >= r_max, value and first two derivatives zero
    at r_max (C^2 everywhere), for any exponent p >= 2 (DimeNet's polynomial cutoff)."""

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        if p < 2:
            raise ValueError(f"envelope exponent p must be >= 2, got {p}")
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        u = (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * x.pow(p)
            + p * (p + 2.0) * x.pow(p + 1.0)
            - 0.5 * p * (p + 1.0) * x.pow(p + 2.0)
        )
        return torch.where(x < 1.0, u, torch.zeros_like(u))


class CubicBSplineBasis(nn.Module):
    """Uniform cubic B-spline basis on [0, r_max] with ``num_basis`` functions.

    Knot spacing ``h = r_max / (num_basis - 3)``. Only the four functions whose support contains r
    are evaluated (closed-form blending weights), then scattered into a ``[n_edges, num_basis]``
    matrix so that the learnable table is applied by one small matmul. The basis is a partition of
    unity and C^2 in r.
    """

    def __init__(self, r_max: float, num_basis: int) -> None:
        super().__init__()
        if num_basis < 4:
            raise ValueError("a cubic B-spline basis needs at least 4 functions")
        self.num_basis = int(num_basis)
        self.inv_h = float((num_basis - 3) / r_max)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        t = r * self.inv_h
        m = torch.clamp(torch.floor(t.detach()), 0.0, float(self.num_basis - 4))
        u = t - m
        u2 = u * u
        u3 = u2 * u
        vals = torch.stack(
            [
                (1.0 - u) ** 3,
                3.0 * u3 - 6.0 * u2 + 4.0,
                -3.0 * u3 + 3.0 * u2 + 3.0 * u + 1.0,
                u3,
            ],
            dim=-1,
        ) * (1.0 / 6.0)
        idx = m.to(torch.long).unsqueeze(-1) + torch.arange(4, device=r.device).unsqueeze(0)
        basis = torch.zeros(r.shape[0], self.num_basis, dtype=r.dtype, device=r.device)
        return basis.scatter(1, idx, vals)


class SincBasis(nn.Module):
    """The reference code's basis ``(2/r_max) sin(f_k r)/r`` with trainable f_k (init 1..K /Å)."""

    def __init__(self, r_max: float, num_basis: int) -> None:
        super().__init__()
        self.prefactor = 2.0 / float(r_max)
        self.freqs = nn.Parameter(torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        fr = r.unsqueeze(-1) * self.freqs
        return self.prefactor * self.freqs * torch.sinc(fr / math.pi)


class RadialWeights(nn.Module):
    """Per-edge tensor-product weights ``w(r) = envelope(r) * basis(r) @ C``.

    ``C`` has one column per weight of the tensor product (one per path and channel). With the
    B-spline basis this is a learnable cubic spline of r for every weight; no MLP, no bias.
    """

    def __init__(
        self, r_max: float, num_basis: int, num_weights: int, basis: str = "bspline", p: int = 6
    ) -> None:
        super().__init__()
        if basis == "bspline":
            self.basis = CubicBSplineBasis(r_max, num_basis)
            std = 1.0
        elif basis == "sinc":
            self.basis = SincBasis(r_max, num_basis)
            std = math.sqrt(2.0 / (num_basis + num_weights))
        else:
            raise ValueError(f"unknown radial basis {basis!r}")
        self.envelope = PolynomialEnvelope(r_max, p)
        self.coefficients = nn.Parameter(torch.randn(num_basis, num_weights) * std)

    def enveloped_basis(self, r: torch.Tensor) -> torch.Tensor:
        """``envelope(r) * basis(r)``, ``[n_edges, num_basis]``; weights = this @ coefficients."""
        return self.basis(r) * self.envelope(r).unsqueeze(-1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.enveloped_basis(r) @ self.coefficients
