"""The spherical-grid node-mixing layer (the paper's "S2 MLP").

Equivariant features ``U x (0e+1o+2e+...)`` are read as U functions on the sphere, sampled on an
equiangular (SOFT) grid, passed through an ordinary MLP at every grid point (channels as the MLP's
input, the same weights at every point), and projected back to spherical-harmonic coefficients.

The transforms are precomputed dense matrices (from e3nn's ``ToS2Grid``/``FromS2Grid``), so the
whole block is three small matmuls plus the MLP. A pointwise nonlinearity creates frequencies above
lmax that alias on a finite grid: the block is rotation-equivariant only up to a grid-dependent
error (decreasing with resolution), exactly equivariant when the MLP is the identity.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn


def s2_grid_matrices(
    lmax: int, res: tuple[int, int], dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``to_grid [(lmax+1)^2, n_grid]`` and ``from_grid [n_grid, (lmax+1)^2]`` matrices.

    Normalisation: a grid function is ``f(x) = sqrt(4 pi) sum c_lm Y_lm(x)`` with
    integral-normalised Y (so a constant coefficient c maps to the constant c), and ``from_grid``
    inverts it exactly for band-limited input (requires an even beta resolution).
    """
    res_beta, res_alpha = int(res[0]), int(res[1])
    if res_beta % 2:
        raise ValueError(f"the S2 grid needs an even beta resolution, got {res_beta}")
    if res_beta < 2 * (lmax + 1) or res_alpha < 2 * lmax + 1:
        raise ValueError(
            f"S2 grid {res_beta}x{res_alpha} is too coarse for lmax={lmax}: "
            f"need beta >= {2 * (lmax + 1)} and alpha >= {2 * lmax + 1}"
        )
    norm = torch.full((lmax + 1,), math.sqrt(4.0 * math.pi), dtype=torch.float64)
    to_grid = o3.ToS2Grid(lmax, (res_beta, res_alpha), normalization=norm, dtype=torch.float64)
    from_grid = o3.FromS2Grid(
        (res_beta, res_alpha), lmax, normalization=norm, dtype=torch.float64
    )
    dim = (lmax + 1) ** 2
    eye = torch.eye(dim, dtype=torch.float64)
    g = to_grid(eye).reshape(dim, -1)  # [dim, n_grid]
    n_grid = g.shape[1]
    grid_eye = torch.eye(n_grid, dtype=torch.float64).reshape(n_grid, res_beta, res_alpha)
    f = from_grid(grid_eye)  # [n_grid, dim]
    dtype = dtype or torch.get_default_dtype()
    return g.to(dtype), f.to(dtype)


class GridMLP(nn.Module):
    """Bias-free MLP applied to the last axis, SiLU after every layer (the final one included)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.weights = nn.ParameterList(
            [
                nn.Parameter(torch.randn(a, b) * math.sqrt(2.0 / (a + b)))  # glorot normal
                for a, b in zip(dims[:-1], dims[1:], strict=True)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w in self.weights:
            x = torch.nn.functional.silu(x @ w)
        return x


class S2Mixing(nn.Module):
    """irreps -> S2 grid -> per-point MLP -> irreps; original scalars bypass the grid.

    ``x`` (``irreps_in``) is projected up to ``U x (0e+1o+2e...)`` (U = the largest multiplicity
    of the l > 0 inputs), sampled on the grid, mixed by a shared MLP over channel heads, projected
    back, concatenated with the input scalars and projected down to ``irreps_out``.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        lmax: int,
        res: tuple[int, int],
        mlp_hidden: list[int],
        heads: int,
        identity: bool = False,
    ) -> None:
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        self.channels = max(mul for mul, ir in irreps_in if ir.l > 0)
        if self.channels % heads:
            raise ValueError(f"S2 channels {self.channels} not divisible by heads {heads}")
        self.heads = heads
        self.lmax = lmax
        grid_irreps = o3.Irreps.spherical_harmonics(lmax)
        self.irreps_up = o3.Irreps([(self.channels, ir) for _, ir in grid_irreps])
        self.proj_up = o3.Linear(irreps_in, self.irreps_up)
        g, f = s2_grid_matrices(lmax, res)
        self.register_buffer("to_grid", g, persistent=False)
        self.register_buffer("from_grid", f, persistent=False)
        head_dim = self.channels // heads
        self.identity = identity
        self.mlp = GridMLP([head_dim, *mlp_hidden, head_dim])
        self.num_scalars_in = sum(mul for mul, ir in irreps_in if ir.l == 0)
        self.irreps_cat = (o3.Irreps(f"{self.num_scalars_in}x0e") + self.irreps_up).simplify()
        self.proj_down = o3.Linear(self.irreps_cat, irreps_out)
        # slices of the l-blocks in the irreps layout (mul-major inside each block)
        self.block_dims = [2 * ir.l + 1 for _, ir in grid_irreps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        u = self.channels
        up = self.proj_up(x)
        # irreps layout [u*1 | u*3 | u*5 ...] -> coefficients [n, u, (lmax+1)^2]
        blocks = []
        start = 0
        for d in self.block_dims:
            blocks.append(up[:, start : start + u * d].reshape(n, u, d))
            start += u * d
        coeffs = torch.cat(blocks, dim=-1)  # [n, u, dim]
        # grid values with the channel axis last ([n, n_grid, u]): the per-point MLP then acts on
        # contiguous rows and no grid-sized tensor is ever transposed
        grid = torch.matmul(self.to_grid.t(), coeffs.transpose(1, 2))
        if not self.identity:
            n_grid = self.to_grid.shape[1]
            g = self.mlp(grid.reshape(n, n_grid, self.heads, u // self.heads))
            grid = g.reshape(n, n_grid, u)
        back = torch.matmul(self.from_grid.t(), grid)  # [n, dim, u]
        parts = [x[:, : self.num_scalars_in]]
        start = 0
        for d in self.block_dims:
            parts.append(back[:, start : start + d, :].transpose(1, 2).reshape(n, u * d))
            start += d
        return self.proj_down(torch.cat(parts, dim=-1))
