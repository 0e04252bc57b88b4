"""Message passing and node update blocks of Facet.

Conventions: an edge (i, j) has centre i and neighbour j, ``r_ij = x_j - x_i`` (Å); messages flow
from j to i and are summed at i. Node features are e3nn irreps arrays ``[n_nodes, irreps.dim]``.
"""

from __future__ import annotations

from typing import Optional

import torch
from e3nn import o3
from torch import nn

from facet.blocks import from_dmajor, irrep_shapes, to_dmajor
from facet.config import FacetConfig
from facet.linear import IrrepsLinear
from facet.radial import RadialWeights
from facet.s2 import GridMLP, S2Mixing
from facet.tensor_product import UVUTensorProduct, gather_slots, neighbour_slots


def uvu_instructions(
    irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps
) -> tuple[o3.Irreps, list[tuple[int, int, int, str, bool]]]:
    """Channel-wise ("uvu") tensor-product paths: each (l1 x l2 -> l3) allowed by parity and present
    in the target gets its own output block of multiplicity mul(l1); blocks sorted by irrep."""
    targets = {ir for _, ir in o3.Irreps(irreps_target)}
    irreps_mid = []
    instructions = []
    for i1, (mul, ir1) in enumerate(irreps_in):
        for i2, (_, ir2) in enumerate(irreps_sh):
            for ir_out in ir1 * ir2:
                if ir_out in targets:
                    instructions.append((i1, i2, len(irreps_mid), "uvu", True))
                    irreps_mid.append((mul, ir_out))
    irreps_mid = o3.Irreps(irreps_mid)
    irreps_sorted, perm, _ = irreps_mid.sort()
    instructions = [(a, b, perm[c], mode, w) for a, b, c, mode, w in instructions]
    return irreps_sorted, instructions


class Interaction(nn.Module):
    """Equivariant convolution: ``m_i = sum_j TP(h_j, Y(r_ij); w(|r_ij|)) / avg_num_neighbors^p``,
    then a linear map to the target irreps plus a linear residual adapter of the input.

    ``w`` comes from learnable radial splines (``RadialWeights``): no radial MLP.

    ``fused`` (``facet.ops.use_fused``, inference on the CPU): the tensor product by its fused
    kernel, then both linear maps, the normalisation and the sum as one ``facet::irreps_linear``
    call on the tensor product's per-block results and the input rows.
    """

    # TorchScript compiles the fused branch only when ``fused`` is on (see UVUTensorProduct)
    __constants__ = ["fused"]

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        r_max: float,
        num_radial: int,
        radial_basis: str,
        envelope_p: int,
        avg_num_neighbors: float,
        radial_power: float,
    ) -> None:
        super().__init__()
        irreps_mid, instructions = uvu_instructions(irreps_in, irreps_sh, irreps_out)
        self.tp = UVUTensorProduct(
            irreps_in, irreps_sh, irreps_mid, [(a, b, c) for a, b, c, _, _ in instructions]
        )
        self.radial = RadialWeights(
            r_max, num_radial, self.tp.weight_numel, basis=radial_basis, p=envelope_p
        )
        self.linear_out = IrrepsLinear(irreps_mid, irreps_out)
        self.resid = IrrepsLinear(irreps_in, irreps_out)
        self.inv_norm = float(avg_num_neighbors) ** (-float(radial_power))
        self.in_shapes = irrep_shapes(irreps_in)
        # the fused call's inputs: the tensor product's results ([n, K, mul] per block with
        # paths), then the input blocks ([n, d, mul]); linear_out's weight first, resid's second
        n_results = len(self.tp.blocks)
        mid_sources = [[(b, k0, mul)] for (b, k0), (mul, _) in zip(self.tp.out_pieces,
                                                                   irreps_mid, strict=True)]
        in_sources = [[(n_results + i, 0, mul)] for i, (mul, _) in enumerate(irreps_in)]
        paths_out, alphas_out = self.linear_out.fused_paths(mid_sources, 0, self.inv_norm)
        paths_res, alphas_res = self.resid.fused_paths(in_sources, 1)
        self.fused_paths = paths_out + paths_res
        self.fused_alphas = alphas_out + alphas_res
        self.fused_out_shapes = self.linear_out.fused_out_shapes()
        self.fused = False

    def forward(
        self,
        h: torch.Tensor,
        sh: torch.Tensor,
        r: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        n_out: int,
        row_start: int = 0,
    ) -> torch.Tensor:
        """Messages into the ``n_out`` nodes ``row_start, row_start + 1, ...``: ``centre`` counts
        from ``row_start`` (all centres must be < n_out), ``neighbour`` indexes rows of ``h``."""
        slots = neighbour_slots(centre, n_out, r.shape[0])
        return self.forward_slots(h, gather_slots(neighbour, slots), gather_slots(sh, slots), r,
                                  slots, row_start)

    def forward_slots(
        self,
        h: torch.Tensor,
        nbr_pad: torch.Tensor,
        y_pad: torch.Tensor,
        r: torch.Tensor,
        slots: torch.Tensor,
        row_start: int = 0,
        basis_pad: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript)
    ) -> torch.Tensor:
        """``forward`` for the ``n_out = slots.shape[0]`` nodes from ``row_start`` on, from the
        neighbour-slot map ``slots`` (``facet.tensor_product.neighbour_slots``) and the per-slot
        neighbour rows ``nbr_pad`` and harmonics ``y_pad``; ``r`` per edge. ``basis_pad``: the
        enveloped radial basis per slot (``[n_out, M, num_radial]``, zero on padding) when the
        caller shares one among layers (``Facet.shared_radial_basis``), else computed here."""
        return from_dmajor(self.forward_dmajor(to_dmajor(h, self.in_shapes), nbr_pad, y_pad, r,
                                               slots, row_start, basis_pad))

    def forward_dmajor(
        self,
        hs: list[torch.Tensor],
        nbr_pad: torch.Tensor,
        y_pad: torch.Tensor,
        r: torch.Tensor,
        slots: torch.Tensor,
        row_start: int = 0,
        basis_pad: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript)
    ) -> list[torch.Tensor]:
        """``forward_slots`` on component-major blocks: node features ``hs`` (one
        ``[n_in, d, mul]`` per irrep of ``irreps_in``) -> messages, one ``[n_out, d, mul]`` per
        irrep of ``irreps_out`` (contiguous: the next linear maps read them without a copy)."""
        n = slots.shape[0]
        if basis_pad is None:
            basis_pad = gather_slots(self.radial.enveloped_basis(r), slots)
        rows = hs
        if row_start != 0 or n != hs[0].shape[0]:
            rows = [x[row_start : row_start + n] for x in hs]
        if self.fused and hs[0].device.type == "cpu":
            results = self.tp.forward_dmajor_in(hs, nbr_pad, y_pad, basis_pad,
                                                self.radial.coefficients, False)
            return torch.ops.facet.irreps_linear(results + rows,
                                                 [self.linear_out.weight, self.resid.weight],
                                                 self.fused_paths, self.fused_alphas,
                                                 self.fused_out_shapes, None)
        agg = self.tp.forward_dmajor_in(hs, nbr_pad, y_pad, basis_pad, self.radial.coefficients)
        # per irrep block (no slicing of a concatenated tensor: see facet.linear)
        out = self.linear_out.forward_dmajor(agg)
        res = self.resid.forward_dmajor(rows, None, True)
        return [out[i] * self.inv_norm + res[i] for i in range(len(out))]


class E3LayerNorm(nn.Module):
    """Layer norm that keeps equivariance: the scalars are centred (l > 0 components never are)
    and the features are divided by an RMS. eps inside and outside the sqrt.

    Args:
        irreps: feature irreps, scalars first.
        eps: regulariser of the RMS.
        mode: ``"joint"`` (default): one RMS over the centred scalars and all l > 0 components
            together, so features that vanish by symmetry stay small and the map is smooth.
            ``"separate"``: the authors' choice: scalars by their std, all l > 0 components by
            their own RMS. Near a symmetric site (perfect crystal) the l > 0 features tend to 0
            and this RMS with them, so it amplifies them up to ``1/sqrt(eps)`` = 1000x: the
            energy then has structure on the 1e-3 Å scale (measured on the shipped model
            trained with it: the stiffness of an atom in fcc Cu3Au changes sign between 1e-4
            and 3e-3 Å displacements) and relaxations stall there.
    """

    # TorchScript compiles the fused branch only when ``fused`` is on (see UVUTensorProduct)
    __constants__ = ["fused"]

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-6, mode: str = "joint") -> None:
        super().__init__()
        irreps = o3.Irreps(irreps)
        self.num_scalars = sum(mul for mul, ir in irreps if ir.l == 0)
        if irreps[0].ir.l != 0 and self.num_scalars:
            raise ValueError("E3LayerNorm expects the scalars first in the irreps")
        if mode not in ("joint", "separate"):
            raise ValueError(f"E3LayerNorm mode must be 'joint' or 'separate', not {mode!r}")
        self.dim = irreps.dim
        self.eps = eps
        self.joint = mode == "joint"
        # the scalars' mean as a matrix-vector product, their centring as a masked subtraction:
        # no slices, whose gradients would be zero-filled full-size tensors
        mask = (torch.arange(self.dim) < self.num_scalars).to(torch.get_default_dtype())
        self.register_buffer("scalar_mask", mask, persistent=False)
        self.register_buffer("scalar_mean", mask / max(self.num_scalars, 1), persistent=False)
        # leading scalar blocks, for forward_dmajor
        self.num_scalar_blocks = 0
        for _, ir in irreps:
            if ir.l != 0:
                break
            self.num_scalar_blocks += 1
        # facet.ops.use_fused: forward_dmajor on the CPU as one facet::block_norm call
        self.fused = False

    def _rms_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """``x / (sqrt(mean(x^2) + eps) + eps)``, the mean over each row."""
        return x / (torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_scalars == self.dim:
            return self._rms_normalised(x - x.mean(dim=1, keepdim=True))
        if self.joint:
            centred = x - (x @ self.scalar_mean).unsqueeze(1) * self.scalar_mask
            return self._rms_normalised(centred)
        s, v = torch.split(x, [self.num_scalars, self.dim - self.num_scalars], dim=1)
        s = s - s.mean(dim=1, keepdim=True)
        return torch.cat([self._rms_normalised(s), self._rms_normalised(v)], dim=1)

    def forward_dmajor(self, xs: list[torch.Tensor],
                       gain: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript)
                       ) -> list[torch.Tensor]:
        """``forward`` on component-major blocks (one ``[n, d, mul]`` per irrep); with
        ``gain`` (one value per channel, blocks in order), each channel's result times its
        gain. ``fused`` (inference on the CPU, ``facet.ops``): one kernel call."""
        if self.fused and xs[0].device.type == "cpu":
            return torch.ops.facet.block_norm(xs, self.num_scalar_blocks, self.joint, self.eps,
                                              gain)
        out = self._normalised_blocks(xs)
        if gain is None:
            return out
        offset = 0
        for i in range(len(out)):
            mul = out[i].shape[2]
            out[i] = out[i] * gain[offset : offset + mul]
            offset += mul
        return out

    def _normalised_blocks(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = xs[0].shape[0]
        ns = self.num_scalar_blocks
        if ns > 0:
            total = xs[0].sum(dim=(1, 2))
            for i in range(1, ns):
                total = total + xs[i].sum(dim=(1, 2))
            mean = (total / self.num_scalars).reshape(n, 1, 1)
            xs = [xs[i] - mean if i < ns else xs[i] for i in range(len(xs))]
        if self.joint or ns == 0 or ns == len(xs):
            return self._rms_normalised_blocks(xs, self.dim)
        return (self._rms_normalised_blocks(xs[:ns], self.num_scalars)
                + self._rms_normalised_blocks(xs[ns:], self.dim - self.num_scalars))

    def _rms_normalised_blocks(self, xs: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
        """``_rms_normalised`` over the components of all blocks ``xs`` together (``dim``
        of them per row)."""
        n = xs[0].shape[0]
        squares = xs[0].pow(2).sum(dim=(1, 2))
        for i in range(1, len(xs)):
            squares = squares + xs[i].pow(2).sum(dim=(1, 2))
        denom = (torch.sqrt(squares / dim + self.eps) + self.eps).reshape(n, 1, 1)
        return [x / denom for x in xs]


def channel_gain_index(irreps: o3.Irreps) -> torch.Tensor:
    """For every component of ``irreps``, the index of its irrep channel (for per-channel gains)."""
    idx = []
    channel = 0
    for mul, ir in o3.Irreps(irreps):
        for _ in range(mul):
            idx.extend([channel] * ir.dim)
            channel += 1
    return torch.tensor(idx, dtype=torch.long)


def pad_index(irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> torch.Tensor:
    """Gather index for the padded residual: copy channels of the same irrep type (truncate or
    zero-pad the multiplicity), zeros where the input has no such irrep. -1 marks a zero."""
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    starts = {}
    offset = 0
    for mul, ir in irreps_in:
        starts.setdefault(ir, (offset, mul))
        offset += mul * ir.dim
    idx = []
    for mul, ir in irreps_out:
        start, mul_in = starts.get(ir, (0, 0))
        for u in range(mul):
            for m in range(ir.dim):
                idx.append(start + u * ir.dim + m if u < mul_in else -1)
    return torch.tensor(idx, dtype=torch.long)


class FacetLayer(nn.Module):
    """One Facet layer: ``x = Mix(Interaction(h))``; ``h_new = LN(x) * gain + Pad(h)``.

    Mix is the S2-grid MLP for layers with l > 0 outputs and a plain MLP for scalar-only layers.
    The per-channel gain starts at ``resid_init`` (0: the ReZero start of the reference).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        cfg: FacetConfig,
    ) -> None:
        super().__init__()
        irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.interaction = Interaction(
            irreps_in,
            irreps_sh,
            irreps_out,
            r_max=cfg.r_max,
            num_radial=cfg.num_radial,
            radial_basis=cfg.radial_basis,
            envelope_p=cfg.envelope_p,
            avg_num_neighbors=cfg.avg_num_neighbors,
            radial_power=cfg.radial_power,
        )
        self.scalar_only = irreps_out.lmax == 0
        if self.scalar_only:
            d = irreps_out.dim
            self.mix: nn.Module = GridMLP([d] * (cfg.final_mlp_layers + 1))
        else:
            self.mix = S2Mixing(
                irreps_out,
                irreps_out,
                lmax=irreps_out.lmax,
                res=tuple(cfg.s2_res),
                mlp_hidden=list(cfg.s2_mlp_hidden),
                heads=cfg.s2_heads,
                identity=cfg.s2_identity,
                grid=cfg.s2_grid,
            )
        self.norm = E3LayerNorm(irreps_out, mode=cfg.layer_norm)
        self.gain = nn.Parameter(torch.full((irreps_out.num_irreps,), float(cfg.resid_init)))
        # per block (forward_dmajor): input features ``[n, d, mul]`` per irrep (the gain: one
        # value per channel, output irreps in order); for every output irrep the padded
        # residual's source block (the first input block of that irrep, -1 for none) and its
        # multiplicity (per component in e3nn's layout: channel_gain_index, pad_index)
        self.in_shapes = irrep_shapes(irreps_in)
        self.out_shapes = irrep_shapes(irreps_out)
        self.pad_blocks: list[tuple[int, int]] = []
        for _, ir in irreps_out:
            source = [j for j, (_, ir_in) in enumerate(irreps_in) if ir_in == ir]
            self.pad_blocks.append((source[0], irreps_in[source[0]].mul) if source else (-1, 0))

    def forward(
        self,
        h: torch.Tensor,
        sh: torch.Tensor,
        r: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        n_out: int = -1,
        row_start: int = 0,
    ) -> torch.Tensor:
        """New features of the ``n_out`` nodes from ``row_start`` on (all the rest if
        negative); edges must be centred on those nodes, ``centre`` counted from ``row_start``;
        neighbours may be any node of ``h``."""
        n = h.shape[0] - row_start if n_out < 0 else n_out
        slots = neighbour_slots(centre, n, r.shape[0])
        return self.forward_slots(h, gather_slots(neighbour, slots), gather_slots(sh, slots), r,
                                  slots, row_start)

    def forward_slots(
        self,
        h: torch.Tensor,
        nbr_pad: torch.Tensor,
        y_pad: torch.Tensor,
        r: torch.Tensor,
        slots: torch.Tensor,
        row_start: int = 0,
        basis_pad: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript)
    ) -> torch.Tensor:
        """``forward`` from the neighbour-slot map (see ``Interaction.forward_slots``): new
        features of the ``slots.shape[0]`` nodes from ``row_start`` on."""
        return from_dmajor(self.forward_dmajor(to_dmajor(h, self.in_shapes), nbr_pad, y_pad, r,
                                               slots, row_start, basis_pad))

    def forward_dmajor(
        self,
        hs: list[torch.Tensor],
        nbr_pad: torch.Tensor,
        y_pad: torch.Tensor,
        r: torch.Tensor,
        slots: torch.Tensor,
        row_start: int = 0,
        basis_pad: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript)
    ) -> list[torch.Tensor]:
        """``forward_slots`` on component-major blocks: node features ``hs`` (one
        ``[n_in, d, mul]`` per irrep of ``irreps_in``) -> new features, one ``[n_out, d, mul]``
        per irrep of ``irreps_out``. What ``Facet`` runs between layers: no conversion to the
        e3nn layout and back."""
        n = slots.shape[0]
        x = self.interaction.forward_dmajor(hs, nbr_pad, y_pad, r, slots, row_start, basis_pad)
        x = self.mix.forward_dmajor(x)
        out = self.norm.forward_dmajor(x, self.gain)
        for i in range(len(out)):
            mul = self.out_shapes[i][0]
            y = out[i]
            src, mul_in = self.pad_blocks[i]
            if src >= 0:
                res = hs[src]
                if row_start != 0 or n != res.shape[0]:
                    res = res[row_start : row_start + n]
                if mul_in > mul:
                    res = res[:, :, :mul]
                elif mul_in < mul:
                    res = torch.nn.functional.pad(res, [0, mul - mul_in])
                y = y + res
            out[i] = y
        return out
