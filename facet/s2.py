"""The spherical-grid node-mixing layer (the paper's "S2 MLP").

Equivariant features ``U x (0e+1o+2e+...)`` are read as U functions on the sphere, sampled at the
points of a spherical quadrature, passed through an ordinary MLP at every point (channels as the
MLP's input, the same weights at every point), and projected back to spherical-harmonic
coefficients with the quadrature's weights.

Three quadratures (``FacetConfig.s2_grid``):

- ``"soft"``: e3nn's equiangular SOFT grid (``ToS2Grid``/``FromS2Grid``), ``(beta, alpha)``
  points; the reference code's choice and that of every checkpoint written before the option.
- ``"gauss"``: Gauss-Legendre nodes in cos(beta) times a uniform alpha grid, ``(beta, alpha)``
  points, exact float64 weights; integrates every polynomial of degree
  ``min(2 beta - 1, alpha - 1)`` exactly, with about half the points of SOFT at equal degree.
- ``"lebedev"``: Lebedev's octahedrally symmetric rules (``scipy.integrate.lebedev_rule``), given
  by their degree; exact to that degree with about a third fewer points than ``"gauss"``.

The transforms are precomputed dense matrices, so the whole block is three small matmuls plus the
MLP (and scripts with TorchScript). The round trip grid -> coefficients is exact for band-limited
input up to lmax, so with the identity MLP the block is exactly equivariant. A pointwise
nonlinearity creates frequencies above lmax, and those beyond what the quadrature integrates
exactly alias into the projection: the block is rotation-equivariant only up to a grid-dependent
error that falls quickly with the quadrature's degree (``facet.symmetry`` measures it;
``benchmarks/bench_equivariance.py`` compares the grids).
"""


from __future__ import annotations

import math

import numpy as np
import torch
from e3nn import o3
from torch import nn

from facet.blocks import from_dmajor, irrep_shapes, to_dmajor
from facet.linear import IrrepsLinear, concat_sources

S2_GRIDS = ("soft", "gauss", "lebedev")


def s2_grid_points(kind: str, res: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[n_grid, 3]`` (unit vectors) and weights ``[n_grid]`` (summing to 4 pi) of a
    ``"gauss"`` (``res = (beta, alpha)``) or ``"lebedev"`` (``res = (degree,)``) quadrature."""
    if kind == "gauss":
        if len(res) != 2:
            raise ValueError(f"a 'gauss' S2 grid takes (beta, alpha) points, got {tuple(res)}")
        n_beta, n_alpha = int(res[0]), int(res[1])
        x, w = np.polynomial.legendre.leggauss(n_beta)  # nodes cos(beta), weights sum 2
        alpha = 2.0 * np.pi * np.arange(n_alpha) / n_alpha
        sin_b = np.sqrt(1.0 - x**2)
        # e3nn's frame: beta is measured from the y axis (the frame does not matter)
        xyz = np.stack(
            [
                np.outer(sin_b, np.sin(alpha)),
                np.outer(x, np.ones(n_alpha)),
                np.outer(sin_b, np.cos(alpha)),
            ],
            axis=-1,
        ).reshape(-1, 3)
        weights = np.outer(w, np.full(n_alpha, 2.0 * np.pi / n_alpha)).reshape(-1)
    elif kind == "lebedev":
        if len(res) != 1:
            raise ValueError(f"a 'lebedev' S2 grid takes (degree,), got {tuple(res)}")
        from scipy.integrate import lebedev_rule  # SciPy >= 1.15

        try:
            pts, weights = lebedev_rule(int(res[0]))
        except (ValueError, NotImplementedError) as exc:
            raise ValueError(f"no Lebedev rule of degree {res[0]}: {exc}") from None
        xyz = pts.T
    else:
        raise ValueError(f"S2 grid kind must be one of {S2_GRIDS}, not {kind!r}")
    return torch.as_tensor(xyz, dtype=torch.float64), torch.as_tensor(weights, dtype=torch.float64)


def s2_grid_degree(kind: str, res: tuple[int, ...]) -> int:
    """Highest polynomial degree on the sphere that the quadrature integrates exactly: the
    projection back is exact for grid functions up to this degree minus lmax (SOFT: to the
    ~1e-7 accuracy of e3nn's weights)."""
    if kind == "lebedev":
        return int(res[0])
    if kind == "gauss":
        return min(2 * int(res[0]) - 1, int(res[1]) - 1)
    return min(int(res[0]) - 1, int(res[1]) - 1)


def s2_grid_size(kind: str, res: tuple[int, ...]) -> int:
    """Number of grid points."""
    if kind == "lebedev":
        return int(s2_grid_points(kind, res)[1].numel())
    return int(res[0]) * int(res[1])


def _soft_matrices(lmax: int, res: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """e3nn's SOFT grid, as every checkpoint before ``s2_grid`` existed used it (float64)."""
    if len(res) != 2:
        raise ValueError(f"a 'soft' S2 grid takes (beta, alpha) points, got {tuple(res)}")
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
    return g, f


def s2_grid_matrices(
    lmax: int,
    res: tuple[int, ...],
    dtype: torch.dtype | None = None,
    kind: str = "soft",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``to_grid [(lmax+1)^2, n_grid]`` and ``from_grid [n_grid, (lmax+1)^2]`` matrices.

    Normalisation: a grid function is ``f(x) = sqrt(4 pi) sum c_lm Y_lm(x)`` with
    integral-normalised Y (so a constant coefficient c maps to the constant c), and ``from_grid``
    inverts it for band-limited input: ``c_lm = (4 pi)^(-1/2) sum_p w_p f(x_p) Y_lm(x_p)``.
    ``kind="soft"`` (e3nn, needs an even beta resolution; its weights are float32-accurate, the
    round trip is exact to ~1e-7), ``"gauss"`` or ``"lebedev"`` (float64-exact weights; the
    quadrature must integrate degree ``2 lmax`` exactly). ``res``: see ``s2_grid_points``.
    """
    dtype = dtype or torch.get_default_dtype()
    if kind == "soft":
        g, f = _soft_matrices(lmax, res)
        return g.to(dtype), f.to(dtype)
    xyz, w = s2_grid_points(kind, res)
    if s2_grid_degree(kind, res) < 2 * lmax:
        raise ValueError(
            f"S2 grid {kind} {tuple(res)} integrates only degree {s2_grid_degree(kind, res)} "
            f"exactly; lmax={lmax} needs degree >= {2 * lmax}"
        )
    y = o3.spherical_harmonics(
        o3.Irreps.spherical_harmonics(lmax), xyz, normalize=True, normalization="integral"
    )  # [n_grid, dim]
    g = math.sqrt(4.0 * math.pi) * y.t()
    f = y * (w / math.sqrt(4.0 * math.pi))[:, None]
    return g.contiguous().to(dtype), f.contiguous().to(dtype)


def antipodal_layout(
    to_grid: torch.Tensor, from_grid: torch.Tensor, lmax: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]] | None:
    """The grid matrices in the antipodal layout of ``facet::s2_mlp``, or None if the grid is not
    centrally symmetric with equal weights at antipodes (SOFT and Gauss grids with an odd number
    of alpha points).

    Layout: grid points ``G/2 + p`` are the antipodes of points ``p < G/2`` (the quadrature's
    points reordered; the block's function does not depend on the order of its grid points)
    and the ``(lmax+1)^2`` coefficient rows are grouped by parity, even l first. Since
    ``Y_lm(-x) = (-1)^l Y_lm(x)``, the second half of the columns is, exactly, the first half
    times ``(-1)^l``; the fused kernel then evaluates both transforms on half the grid.

    Returns ``(to_grid [dim, G], from_grid [G, dim], order)``, ``order`` the l of the row
    blocks (e.g. ``[0, 2, 1]``).
    """
    dim, n_grid = to_grid.shape
    if n_grid % 2:
        return None
    order = [l for l in range(lmax + 1) if l % 2 == 0] + [l for l in range(lmax + 1) if l % 2]
    rows = torch.cat([torch.arange(l * l, (l + 1) * (l + 1)) for l in order])
    sign = torch.cat([torch.full((2 * l + 1,), float((-1) ** l)) for l in order])
    g = to_grid.detach().to(torch.float64)[rows]  # [dim, G]
    f = from_grid.detach().to(torch.float64)[:, rows]  # [G, dim]
    # antipode of every point: the column equal to its own times the parity signs
    dist = torch.cdist((g * sign[:, None]).t(), g.t(),
                       compute_mode="donot_use_mm_for_euclid_dist")  # [G, G]
    partner = dist.argmin(dim=1)
    scale = float(g.abs().max())
    tol = 1e-6 * scale if to_grid.dtype == torch.float32 else 1e-10 * scale
    points = torch.arange(n_grid)
    if bool((dist[points, partner] > tol).any()) or bool((partner == points).any()):
        return None
    if not bool((partner[partner] == points).all()):
        return None
    # equal weights at antipodes, to the matrices' precision (SOFT's e3nn weights are accurate
    # to ~1e-7 only: its float64 matrices keep the plain layout, the same function)
    ftol = 1e-6 if to_grid.dtype == torch.float32 else 1e-12
    if bool(((f[partner] - f * sign[None, :]).abs() > ftol * float(f.abs().max())).any()):
        return None
    first = points[points < partner]
    # the second half from the first, in the matrices' own dtype (exact: sign flips)
    g_half = to_grid.detach()[rows][:, first]
    f_half = from_grid.detach()[first][:, rows]
    sign_t = sign.to(to_grid.dtype)
    g_anti = torch.cat([g_half, g_half * sign_t[:, None]], dim=1).contiguous()
    f_anti = torch.cat([f_half, f_half * sign_t[None, :]], dim=0).contiguous()
    return g_anti, f_anti, order


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

    def forward_dmajor(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The MLP on scalar features as component-major blocks (``[n, 1, mul]`` each): one
        ``[n, 1, dims[-1]]`` block."""
        return [self(from_dmajor(xs)).unsqueeze(1)]

    def weight(self, index: int) -> torch.Tensor:
        """Layer ``index``'s weight ``[dims[index], dims[index + 1]]`` (empty if there is no
        such layer)."""
        out = torch.empty(0)
        for i, w in enumerate(self.weights):
            if i == index:
                out = w
        return out

    def after_first(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP from the first layer's pre-activation ``x @ weight(0)`` on."""
        x = torch.nn.functional.silu(x)
        for i, w in enumerate(self.weights):
            if i > 0:
                x = torch.nn.functional.silu(x @ w)
        return x


class S2Mixing(nn.Module):
    """irreps -> S2 grid -> per-point MLP -> irreps; original scalars bypass the grid.

    ``x`` (``irreps_in``) is projected up to ``U x (0e+1o+2e...)`` (U = the largest multiplicity
    of the l > 0 inputs), sampled on the grid, mixed by a shared MLP over channel heads, projected
    back, concatenated with the input scalars and projected down to ``irreps_out``. ``grid`` and
    ``res`` choose the quadrature (see ``s2_grid_matrices``).

    ``fused`` (``facet.ops.use_fused``, inference on the CPU): the grid part runs in
    ``facet::s2_mlp`` one atom at a time in cache (two-layer MLPs, i.e. one hidden width).
    """

    # TorchScript compiles the fused branch only when ``fused`` is on (see UVUTensorProduct)
    __constants__ = ["fused"]

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        lmax: int,
        res: tuple[int, int],
        mlp_hidden: list[int],
        heads: int,
        identity: bool = False,
        grid: str = "soft",
    ) -> None:
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        self.channels = max(mul for mul, ir in irreps_in if ir.l > 0)
        self.in_shapes = irrep_shapes(irreps_in)
        if self.channels % heads:
            raise ValueError(f"S2 channels {self.channels} not divisible by heads {heads}")
        self.heads = heads
        self.lmax = lmax
        grid_irreps = o3.Irreps.spherical_harmonics(lmax)
        self.irreps_up = o3.Irreps([(self.channels, ir) for _, ir in grid_irreps])
        self.proj_up = IrrepsLinear(irreps_in, self.irreps_up)
        g, f = s2_grid_matrices(lmax, res, kind=grid)
        self.register_buffer("to_grid", g, persistent=False)
        self.register_buffer("from_grid", f, persistent=False)
        # the fused kernel's copies: antipodal layout where the grid allows (half the
        # transform work), else the same matrices; l of its row blocks in ``fused_order``
        anti = antipodal_layout(g, f, lmax)
        if anti is None:
            anti = (g, f, list(range(lmax + 1)))
        self.register_buffer("to_grid_fused", anti[0], persistent=False)
        self.register_buffer("from_grid_fused", anti[1], persistent=False)
        self.fused_order: list[int] = anti[2]
        self.fused_unorder: list[int] = [anti[2].index(l) for l in range(lmax + 1)]
        head_dim = self.channels // heads
        self.identity = identity
        self.mlp = GridMLP([head_dim, *mlp_hidden, head_dim])
        self.num_scalars_in = sum(mul for mul, ir in irreps_in if ir.l == 0)
        # input blocks of the scalars passed by the grid
        self.num_scalar_blocks = len(self._leading_scalars(irreps_in))
        if any(ir.l == 0 for _, ir in irreps_in[self.num_scalar_blocks:]):
            raise ValueError(f"S2Mixing expects the scalars of {irreps_in} first")
        self.irreps_cat = (o3.Irreps(f"{self.num_scalars_in}x0e") + self.irreps_up).simplify()
        self.proj_down = IrrepsLinear(self.irreps_cat, irreps_out)
        # slices of the l-blocks in the irreps layout (mul-major inside each block)
        self.block_dims = [2 * ir.l + 1 for _, ir in grid_irreps]
        # "S2 fold": the MLP's first layer is linear up to its SiLU and so is the grid
        # transform, so (to_grid^T C) W1 = to_grid^T (C W1): applied to the (lmax+1)^2
        # coefficients instead of the grid points, the first matmul and the transform shrink
        # whenever heads * hidden < u (Facet-S: 64 -> 32 channels on the grid). Same function,
        # re-associated (rounding only); used where it needs fewer multiplications.
        dim, n_grid = g.shape
        hidden = ([*mlp_hidden, head_dim])[0]
        plain = n_grid * dim * self.channels + n_grid * self.channels * hidden
        folded = dim * self.channels * hidden + n_grid * dim * heads * hidden
        self.fold = (not identity) and folded < plain
        self.fusable = (not identity) and len(mlp_hidden) == 1
        self.fused = False
        # the fused path's linear maps as facet::irreps_linear calls: proj_up from the input
        # blocks, its outputs in the kernel's row order; proj_down from the input scalar
        # blocks and the grid's result [n, (lmax+1)^2, u] (l blocks in that order), side by side
        self.up_paths, self.up_alphas = self.proj_up.fused_paths(
            [[(i, 0, mul)] for i, (mul, _) in enumerate(irreps_in)], 0, 1.0, self.fused_unorder)
        self.up_out_shapes = self.proj_up.fused_out_shapes(self.fused_unorder)
        ns = self.num_scalar_blocks
        order = self.fused_order
        first = [sum(self.block_dims[k] for k in order[: order.index(l)]) for l in range(lmax + 1)]
        pieces = [(irreps_in[k].ir, k, 0, irreps_in[k].mul) for k in range(ns)]
        pieces += [(ir, ns, first[l], self.channels) for l, (_, ir) in enumerate(grid_irreps)]
        self.down_paths, self.down_alphas = self.proj_down.fused_paths(
            concat_sources(self.irreps_cat, pieces))
        self.down_out_shapes = self.proj_down.fused_out_shapes()

    @staticmethod
    def _leading_scalars(irreps: o3.Irreps) -> list[int]:
        """Indices of the scalar blocks at the start of ``irreps``."""
        out = []
        for i, (_, ir) in enumerate(irreps):
            if ir.l != 0:
                break
            out.append(i)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, irreps_in.dim]`` -> ``[n, irreps_out.dim]`` (e3nn layouts)."""
        return from_dmajor(self.forward_dmajor(to_dmajor(x, self.in_shapes)))

    def forward_dmajor(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The block on component-major features: one ``[n, d, mul]`` per irrep of
        ``irreps_in`` -> one ``[n, d, mul]`` per irrep of ``irreps_out``."""
        if self.fused and xs[0].device.type == "cpu":
            # the MLP's first layer (per head: block-diagonal) folded into proj_up's weights:
            # the fold's z [n, (lmax+1)^2, heads * hidden] ([n, 2l+1, H] per l, kernel order)
            w1 = self.mlp.weight(0)
            if self.heads > 1:
                w1 = torch.kron(torch.eye(self.heads, dtype=w1.dtype, device=w1.device), w1)
            zl = torch.ops.facet.irreps_linear(xs, [self.proj_up.weight], self.up_paths,
                                               self.up_alphas, self.up_out_shapes, w1)
            back = torch.ops.facet.s2_mlp(torch.cat(zl, dim=1), self.to_grid_fused,
                                          self.mlp.weight(1), self.from_grid_fused, self.heads)
            return torch.ops.facet.irreps_linear(
                xs[: self.num_scalar_blocks] + [back], [self.proj_down.weight], self.down_paths,
                self.down_alphas, self.down_out_shapes, None)
        up = self.proj_up.forward_dmajor(xs, None, True)  # [n, 2l+1, u] per l
        back = self._grid(torch.cat(up, dim=1))  # coefficients [n, (lmax+1)^2, u]
        back_blocks = list(torch.split(back, self.block_dims, dim=1))
        # proj_down's blocks: the merged scalars (input scalars + the grid's l = 0 output),
        # then the grid's l > 0 blocks
        if self.num_scalar_blocks > 0:
            scalars = xs[: self.num_scalar_blocks] + back_blocks[:1]
            down_in = [torch.cat(scalars, dim=2)] + back_blocks[1:]
        else:
            down_in = back_blocks
        return self.proj_down.forward_dmajor(down_in, None, True)

    def _grid(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Coefficients ``[n, dim, u]`` -> grid -> MLP -> coefficients ``[n, dim, u]``."""
        n, u = coeffs.shape[0], coeffs.shape[2]
        n_grid = self.to_grid.shape[1]
        if self.fold:
            pre = torch.matmul(self.to_grid.t(), self._first_layer(coeffs))  # [n, n_grid, H]
            g = self.mlp.after_first(pre.reshape(n, n_grid, self.heads, -1))
            grid = g.reshape(n, n_grid, u)
        else:
            # grid values with the channel axis last ([n, n_grid, u]): the per-point MLP then
            # acts on contiguous rows and no grid-sized tensor is ever transposed
            grid = torch.matmul(self.to_grid.t(), coeffs)
            if not self.identity:
                g = self.mlp(grid.reshape(n, n_grid, self.heads, u // self.heads))
                grid = g.reshape(n, n_grid, u)
        return torch.matmul(self.from_grid.t(), grid)  # [n, dim, u]

    def _first_layer(self, coeffs: torch.Tensor) -> torch.Tensor:
        """The MLP's first layer applied to the coefficients ``[n, dim, u]`` (the fold), per
        head: ``[n, dim, heads, u/heads] @ W1`` -> ``[n, dim, heads * hidden]``."""
        n, dim, u = coeffs.shape[0], coeffs.shape[1], coeffs.shape[2]
        w1 = self.mlp.weight(0)  # [u / heads, hidden]
        ch = coeffs.reshape(n, dim, self.heads, u // self.heads)
        return torch.matmul(ch, w1).reshape(n, dim, self.heads * w1.shape[1])
