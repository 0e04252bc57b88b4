"""An equivariant linear map (e3nn's ``o3.Linear``) evaluated per irrep block without slicing.

e3nn's generated code takes each input irrep with ``narrow``, and the gradient of every slice is
a zero-filled tensor of the whole input that autograd then adds up: for a layer's 11-irrep
tensor-product output that is 11 full-size fills and additions per evaluation (about a tenth
of Facet-S's CPU time). ``IrrepsLinear`` holds the same parameters and computes the same
function from the blocks as separate tensors (``forward_blocks``), or splits its input once
(``torch.split``, whose gradient is one concatenation). For inference on the CPU the modules that
use it evaluate their maps as one ``facet::irreps_linear`` call (``fused_paths``).
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch
from e3nn import o3


class IrrepsLinear(o3.Linear):
    """``o3.Linear(irreps_in, irreps_out)`` (internal, shared weights, no biases): same
    parameters (``weight``, the state-dict key), same initialisation, same function.

    Args:
        irreps_in: input irreps.
        irreps_out: output irreps.

    Examples:
        >>> lin = IrrepsLinear("4x0e+2x1o", "3x0e+1x1o")
        >>> x = torch.randn(5, 10)
        >>> torch.allclose(lin(x), o3.Linear.forward(lin, x))
        True
    """

    def __init__(self, irreps_in: o3.Irreps | str, irreps_out: o3.Irreps | str) -> None:
        super().__init__(irreps_in, irreps_out)
        if self.bias_numel or not self.internal_weights or not self.shared_weights:
            raise ValueError("IrrepsLinear supports internal shared weights without biases only")
        self.in_sizes = [mul * ir.dim for mul, ir in self.irreps_in]
        self.in_shapes = [(mul, ir.dim) for mul, ir in self.irreps_in]
        self.out_shapes = [(mul, ir.dim) for mul, ir in self.irreps_out]
        # per path: input block, output block, offset of its [mul_in, mul_out] weight in
        # ``weight``, mul_in, mul_out, normalisation (e3nn's path_weight)
        paths: list[tuple[int, int, int, int, int, float]] = []
        start = 0
        for ins in self.instructions:
            mul_in, mul_out = ins.path_shape
            if mul_in * mul_out == 0:
                continue
            paths.append((ins.i_in, ins.i_out, start, mul_in, mul_out, float(ins.path_weight)))
            start += mul_in * mul_out
        self.paths = paths
        # per output irrep whose paths' weights lie consecutively in ``weight`` with one
        # normalisation (e3nn's layout and default normalisation): one matmul of the inputs
        # side by side with the stacked weights; others sum their paths one by one
        groups: list[tuple[int, int, int, int, float, list[int]]] = []
        for i_out in range(len(self.out_shapes)):
            mine = [p for p in paths if p[1] == i_out]
            if not mine:
                continue
            contiguous = all(b[2] == a[2] + a[3] * a[4] for a, b in itertools.pairwise(mine))
            if contiguous and len({p[5] for p in mine}) == 1:
                end = mine[-1][2] + mine[-1][3] * mine[-1][4]
                groups.append((i_out, mine[0][2], end, sum(p[3] for p in mine), mine[0][5],
                               [p[0] for p in mine]))
        self.groups = groups

    def fused_paths(
        self,
        sources: list[list[tuple[int, int, int]]],
        weight_index: int = 0,
        scale: float = 1.0,
        out_order: list[int] | None = None,
    ) -> tuple[list[int], list[float]]:
        """This map's paths for ``facet::irreps_linear`` (``facet/ops/irreps_linear.cpp``):
        ``(paths, alphas)``, five integers ``(tensor, first component, output, weight_index,
        weight offset)`` and one factor (e3nn's path normalisation times ``scale``) per path.

        Args:
            sources: for every input irrep, the pieces ``(tensor, first component, channels)``
                of the kernel's input tensors whose channels, side by side, are that irrep's
                (one piece: the irrep is a tensor or components of one; several: a
                concatenation, which the kernel then never forms).
            weight_index: the index of this map's ``weight`` in the kernel's weight list.
            scale: a factor on the whole map (e.g. a message normalisation).
            out_order: the kernel's output index of each output irrep (default: the same).
        """
        paths: list[int] = []
        alphas: list[float] = []
        for i_in, i_out, start, mul_in, mul_out, path_weight in self.paths:
            row = 0
            for tensor, first, channels in sources[i_in]:
                o = i_out if out_order is None else out_order[i_out]
                paths += [tensor, first, o, weight_index, start + row * mul_out]
                alphas.append(path_weight * scale)
                row += channels
            if row != mul_in:
                raise ValueError(f"input irrep {i_in} has {mul_in} channels, its sources {row}")
        return paths, alphas

    def fused_out_shapes(self, out_order: list[int] | None = None) -> list[int]:
        """``(d, mul)`` of every output irrep, flattened, in the kernel's output order."""
        order = list(range(len(self.out_shapes))) if out_order is None else out_order
        shapes = [0] * (2 * len(self.out_shapes))
        for i, (mul, d) in enumerate(self.out_shapes):
            shapes[2 * order[i]] = d
            shapes[2 * order[i] + 1] = mul
        return shapes

    def forward(self, features: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, irreps_in.dim]`` -> ``[n, irreps_out.dim]`` (e3nn layouts)."""
        n = features.shape[0]
        outs = self.forward_blocks(self.split(features))
        return torch.cat([o.reshape(n, o.shape[1] * o.shape[2]) for o in outs], dim=1)

    def forward_dmajor_blocks(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Component-major blocks ``[n, dim_i, mul_i]`` -> ``[n, dim_o, mul_o]``."""
        return self.forward_dmajor(blocks, None, True)

    def split(self, features: torch.Tensor) -> list[torch.Tensor]:
        """``[n, irreps_in.dim]`` -> one ``[n, mul, dim]`` view per input irrep."""
        n = features.shape[0]
        parts = torch.split(features, self.in_sizes, dim=1)
        return [parts[i].reshape(n, self.in_shapes[i][0], self.in_shapes[i][1])
                for i in range(len(parts))]

    def forward_blocks(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The map on irrep blocks: ``blocks[i]`` ``[n, mul_i, dim_i]`` for every input irrep
        (any strides) -> one ``[n, mul_o, dim_o]`` per output irrep (transposed views of
        ``forward_dmajor``'s results)."""
        return [o.transpose(1, 2) for o in self.forward_dmajor(blocks)]

    def forward_dmajor(self, blocks: list[torch.Tensor],
                       right: Optional[torch.Tensor] = None,  # noqa: UP045
                       dmajor_in: bool = False) -> list[torch.Tensor]:
        """The map on irrep blocks (``forward_blocks``), results ``[n, dim_o, mul_o]``
        (component-major, contiguous rows); with ``right`` ``[mul_o, m]`` (every output irrep
        of one multiplicity ``mul_o``), a channel map applied after: ``[n, dim_o, m]`` from one
        matmul per output irrep (the weights times ``right`` first; a linear map that follows,
        such as an MLP's first layer, then costs no pass over the features). ``dmajor_in``:
        the input blocks are component-major too (``[n, dim_i, mul_i]``; contiguous ones then
        enter the matmuls without a copy)."""
        n = blocks[0].shape[0]
        if not dmajor_in:
            blocks = [b.transpose(1, 2) for b in blocks]
        outs: list[torch.Tensor] = [blocks[0]] * len(self.out_shapes)
        done: list[bool] = [False] * len(self.out_shapes)
        for i_out, start, end, mul_in, path_weight, inputs in self.groups:
            mul_out, d = self.out_shapes[i_out]
            w = self.weight[start:end].reshape(mul_in, mul_out) * path_weight
            if right is not None:
                w = w @ right
            xs = [blocks[i] for i in inputs]  # [n, d, mul_i]
            x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=2)
            outs[i_out] = (x.reshape(n * d, mul_in) @ w).reshape(n, d, w.shape[1])
            done[i_out] = True
        for i_out, (mul_out, d) in enumerate(self.out_shapes):
            if done[i_out]:
                continue
            cols = mul_out if right is None else right.shape[1]
            acc = blocks[0].new_zeros((n * d, cols))
            for i_in, o, start, mul_in, mul_o, path_weight in self.paths:
                if o == i_out:
                    w = self.weight[start : start + mul_in * mul_o].reshape(mul_in, mul_o)
                    w = w * path_weight
                    if right is not None:
                        w = w @ right
                    acc = acc + blocks[i_in].reshape(n * d, mul_in) @ w
            outs[i_out] = acc.reshape(n, d, cols)
        return outs


def concat_sources(
    irreps: o3.Irreps | str, pieces: list[tuple[o3.Irrep, int, int, int]]
) -> list[list[tuple[int, int, int]]]:
    """The ``sources`` (``IrrepsLinear.fused_paths``) of ``irreps`` when its channels are the
    ``pieces`` ``(irrep, tensor, first component, channels)`` side by side, in order (e.g. the
    concatenation of several blocks, neighbours of one irrep merged by ``simplify``)."""
    sources: list[list[tuple[int, int, int]]] = []
    k = 0
    for mul, ir in o3.Irreps(irreps):
        mine: list[tuple[int, int, int]] = []
        channels = 0
        while channels < mul:
            if k >= len(pieces) or pieces[k][0] != ir or channels + pieces[k][3] > mul:
                raise ValueError(f"the pieces {pieces} do not form {irreps} channel for channel")
            mine.append(pieces[k][1:])
            channels += pieces[k][3]
            k += 1
        sources.append(mine)
    if k != len(pieces):
        raise ValueError(f"the pieces {pieces} are more than {irreps}")
    return sources

