"""facet.ops' fused kernels (tensor product, S2 grid MLP, layer norm): same function and
gradients as the torch formulations (and as finite differences), the switches that turn them on
and off, and the errors when they cannot be used."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from e3nn import o3

import facet
import facet.ops
from facet.blocks import to_dmajor
from facet.calculator import FacetCalculator
from facet.layers import E3LayerNorm, uvu_instructions
from facet.model import default_dtype
from facet.tensor_product import UVUTensorProduct, neighbour_slots, pad_rows

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not facet.ops.enabled(), reason="fused kernels do not build here")


def tp_and_inputs(irreps_in: str, target: str, dtype=torch.float64, seed: int = 0):
    """A tensor product and slot-form inputs with uneven neighbour counts (padding slots) and
    one edge whose radial basis is all zero."""
    with default_dtype(dtype):
        sh = o3.Irreps.spherical_harmonics(2)
        mid, ins = uvu_instructions(o3.Irreps(irreps_in), sh, o3.Irreps(target))
        tp = UVUTensorProduct(irreps_in, sh, mid, [(a, b, c) for a, b, c, _, _ in ins])
    g = torch.Generator().manual_seed(seed)
    n_nodes, n_edges, n_out, nb = 11, 70, 7, 5
    h = torch.randn(n_nodes, o3.Irreps(irreps_in).dim, generator=g, dtype=dtype)
    neighbour = torch.randint(0, n_nodes, (n_edges,), generator=g)
    centre = torch.randint(0, n_out, (n_edges,), generator=g)
    y = torch.randn(n_edges, sh.dim, generator=g, dtype=dtype)
    basis = torch.randn(n_edges, nb, generator=g, dtype=dtype)
    basis[3] = 0.0
    coeff = torch.randn(nb, tp.weight_numel, generator=g, dtype=dtype)
    slots = neighbour_slots(centre, n_out, n_edges)
    return tp, (h, pad_rows(neighbour)[slots], pad_rows(y)[slots], pad_rows(basis)[slots],
                coeff)


def value_and_grads(tp, inputs, fused: bool):
    h, nbr, y, basis, coeff = inputs
    h, y, basis = (t.detach().clone().requires_grad_(True) for t in (h, y, basis))
    tp.fused = fused
    out = tp.forward_slots(h, nbr, y, basis, coeff)
    w = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * w).sum(), [h, y, basis])
    return [out.detach(), *grads]


@pytest.mark.parametrize("irreps_in,target", [
    ("16x0e", "8x0e+4x1o+2x2e"),                 # a first layer: scalars in
    ("8x0e+4x1o+2x2e", "8x0e+4x1o+2x2e"),        # a hidden layer
    ("8x0e+4x1o+2x2e", "8x0e"),                  # the scalar-only last layer
    # multiplicities of whole vectors (16 float32 / 8 float64 lanes with AVX-512): the
    # register-blocked kernels; 2x3e: an irrep dimension without one (the generic kernel)
    ("32x0e", "32x0e+32x1o+32x2e"),
    ("32x0e+16x1o+16x2e", "32x0e+16x1o+16x2e"),
    ("32x0e+16x1o+16x2e+16x3o", "32x0e"),
])
def test_fused_equals_batched_matmul(irreps_in, target):
    tp, inputs = tp_and_inputs(irreps_in, target)
    ref = value_and_grads(tp, inputs, fused=False)
    got = value_and_grads(tp, inputs, fused=True)
    for name, a, b in zip(["out", "d/dh", "d/dy", "d/dbasis"], ref, got, strict=True):
        assert a.abs().max() > 0
        assert torch.allclose(a, b, atol=1e-12 * a.abs().max(), rtol=0), name


@pytest.mark.parametrize("irreps", ["8x0e+4x1o+2x2e", "32x0e+16x1o+16x2e"])
def test_fused_float32_and_two_threads(irreps):
    tp, inputs = tp_and_inputs(irreps, irreps, dtype=torch.float32)
    ref = value_and_grads(tp, inputs, fused=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # per-thread accumulators of the neighbour gradient
        got = value_and_grads(tp, inputs, fused=True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(ref, got, strict=True):
        assert torch.allclose(a, b, atol=2e-5 * a.abs().max(), rtol=0)


@pytest.mark.skipif(not __import__("shutil").which("nm"), reason="needs binutils' nm")
def test_kernels_split_their_loops_among_torchs_threads():
    """The library calls OpenMP's parallel region (at::parallel_for is an inline template: a
    library compiled without -fopenmp runs every kernel on one thread) and takes its OpenMP
    from the process (torch's runtime), not a copy of its own."""
    lib = facet.ops.load() or str(facet.ops.build())
    undefined = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True,
                               text=True, check=True).stdout
    assert "GOMP_parallel" in undefined
    needed = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True).stdout
    assert "libgomp" not in needed
    from facet.lammps.plugin import plugin_library

    plugin = plugin_library()  # the plugin compiles the same sources (CMakeLists.txt)
    if plugin is not None:
        undefined = subprocess.run(["nm", "-D", "--undefined-only", str(plugin)],
                                   capture_output=True, text=True, check=True).stdout
        assert "GOMP_parallel" in undefined


@pytest.mark.parametrize("d1", [1, 3, 5])
def test_kernel_reads_row_strided_features_in_place(d1):
    """x as a block of columns of wider rows (the component-major node features) gives the
    same values and gradients as a contiguous copy (register-blocked and generic shapes)."""
    facet.ops.load()
    g = torch.Generator().manual_seed(0)
    for mul in (16, 6):
        n_in, n, m, k_total, nb = 9, 5, 4, 4, 3
        wide = torch.randn(n_in, 7 + d1 * mul + 2, generator=g, dtype=torch.float64)
        x = wide[:, 7 : 7 + d1 * mul].reshape(n_in, d1, mul)
        assert not x.is_contiguous() and x.stride(2) == 1
        nbr = torch.randint(0, n_in, (n, m), generator=g)
        t = torch.randn(n, m, d1, k_total, generator=g, dtype=torch.float64)
        basis = torch.rand(n, m, nb, generator=g, dtype=torch.float64)
        c = torch.randn(nb, 2, mul, generator=g, dtype=torch.float64)
        pk = torch.tensor([0, 0, 1, 1])
        grad = torch.randn(n, mul, k_total, generator=g, dtype=torch.float64)
        for a, b in zip(torch.ops.facet.uvu_tp_block_backward(grad, x, nbr, t, basis, c, pk),
                        torch.ops.facet.uvu_tp_block_backward(grad, x.contiguous(), nbr, t,
                                                              basis, c, pk), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(torch.ops.facet.uvu_tp_block(x, nbr, t, basis, c, pk),
                           torch.ops.facet.uvu_tp_block(x.contiguous(), nbr, t, basis, c, pk))


def test_out_of_range_indices_are_refused():
    """A neighbour row or path index outside its tensor is an error, not a wild read."""
    x = torch.randn(5, 1, 16, dtype=torch.float64)
    nbr = torch.randint(0, 5, (3, 4))
    t = torch.randn(3, 4, 1, 2, dtype=torch.float64)
    basis = torch.randn(3, 4, 6, dtype=torch.float64)
    c = torch.randn(6, 2, 16, dtype=torch.float64)
    pk = torch.tensor([0, 1])
    torch.ops.facet.uvu_tp_block(x, nbr, t, basis, c, pk)  # valid
    for bad_nbr, bad_pk, what in [(5, None, "neighbour"), (-1, None, "neighbour"),
                                  (None, 2, "path")]:
        n_, p_ = nbr.clone(), pk.clone()
        if bad_nbr is not None:
            n_[2, 3] = bad_nbr
        if bad_pk is not None:
            p_[1] = bad_pk
        with pytest.raises(RuntimeError, match=f"{what} index out of range"):
            torch.ops.facet.uvu_tp_block(x, n_, t, basis, c, p_)
        grad = torch.randn(3, 16, 2, dtype=torch.float64)
        with pytest.raises(RuntimeError, match=f"{what} index out of range"):
            torch.ops.facet.uvu_tp_block_backward(grad, x, n_, t, basis, c, p_)


def test_layer_plans_outside_their_tensors_are_refused():
    """facet::uvu_tp_layer (a layer's blocks in one call) checks its block plan against the
    tensors it indexes: a wrong plan is a message, not a read outside a tensor."""
    tp, (h, nbr, y, basis, coeff) = tp_and_inputs("4x0e+2x1o+2x2e", "4x0e+2x1o+2x2e")
    xs = list(to_dmajor(h, tp.in1_shapes))

    def run(blocks):
        return torch.ops.facet.uvu_tp_layer(xs, nbr, y, basis, coeff, tp.couplings,
                                            tp.paths_of_k, blocks)[0]

    assert len(run(tp.layer_blocks)) == len(tp.blocks)
    first = tp.layer_blocks[:8]
    bad = {"reads input": [len(xs)] + first[1:],
           "is not \\[N": [first[0], first[1] + 1] + first[2:],
           "reads past": first[:5] + [coeff.shape[1]] + first[6:],
           "8 integers": first[:7]}
    for message, blocks in bad.items():
        with pytest.raises(RuntimeError, match=message):
            run(blocks)


@pytest.mark.parametrize("irreps", ["4x0e+2x1o+2x2e", "8x0e+8x1o+8x2e"])  # generic, registers
def test_backward_matches_finite_differences(irreps):
    """The backward kernel against central differences of the forward kernel (float64)."""
    tp, (h, nbr, y, basis, coeff) = tp_and_inputs(irreps, irreps)
    tp.fused = True

    def f(h, y, basis):
        return tp.forward_slots(h, nbr, y, basis, coeff)

    assert torch.autograd.gradcheck(
        f, (h.requires_grad_(True), y.requires_grad_(True), basis.requires_grad_(True)),
        eps=1e-6, atol=1e-7, rtol=1e-6)


def test_training_through_the_fused_kernel_is_refused():
    tp, (h, nbr, y, basis, coeff) = tp_and_inputs("8x0e", "8x0e+4x1o")
    tp.fused = True
    with pytest.raises(RuntimeError, match="for inference"):
        tp.forward_slots(h, nbr, y, basis, coeff.requires_grad_(True))


def s2_block(dtype=torch.float64, irreps="8x0e+4x1o+4x2e", **kw):
    from facet.s2 import S2Mixing

    irreps = o3.Irreps(irreps)
    args = dict(lmax=2, res=(17,), mlp_hidden=[6], heads=2, grid="lebedev")
    args.update(kw)
    with default_dtype(dtype):
        torch.manual_seed(0)
        mix = S2Mixing(irreps, irreps, **args)
    for p in mix.parameters():
        p.requires_grad_(False)
    x = torch.randn(9, irreps.dim, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return mix, x


def s2_value_and_grad(mix, x, fused: bool):
    mix.fused = fused
    x = x.detach().clone().requires_grad_(True)
    out = mix(x)
    w = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return out.detach(), torch.autograd.grad((out * w).sum(), [x])[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hidden", [6, 1])  # the fold (heads x hidden < u) and without it
def test_fused_s2_grid_mlp_equals_the_torch_one(dtype, hidden):
    mix, x = s2_block(dtype, mlp_hidden=[hidden])
    assert mix.fold == (hidden == 1)
    facet.ops.use_fused(mix)
    assert mix.fusable and mix.fused
    ref, got = s2_value_and_grad(mix, x, False), s2_value_and_grad(mix, x, True)
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    for a, b in zip(ref, got, strict=True):
        assert a.abs().max() > 0
        assert torch.allclose(a, b, atol=tol * a.abs().max(), rtol=0)


# Shapes of the kernel's code paths: register-blocked pair rows (hidden and uh whole vectors:
# float 16 lanes, double 8 under AVX-512; 1 / 2 / 4 vectors), an odd number of pair rows (one
# head on the 110-point grid: 55), the pass-by-pass antipodal code (widths not whole vectors)
# and a grid without antipodes (SOFT with an odd alpha count: the plain transforms)
S2_KERNEL_CASES = {
    "blocked 16x16": dict(irreps="8x0e+32x1o+32x2e", mlp_hidden=[16], heads=2),
    "blocked 16x32": dict(irreps="8x0e+64x1o+32x2e", mlp_hidden=[16], heads=2),
    "blocked odd rows": dict(irreps="8x0e+32x1o+32x2e", mlp_hidden=[32], heads=1),
    "lmax 3 blocked": dict(irreps="8x0e+32x1o+32x2e+32x3o", mlp_hidden=[16], heads=2, lmax=3,
                           res=(23,)),
    "passes": dict(mlp_hidden=[6]),
    "plain grid": dict(mlp_hidden=[6], grid="soft", res=(8, 7)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", sorted(S2_KERNEL_CASES))
def test_fused_s2_kernel_paths_equal_the_torch_one(dtype, case):
    kw = dict(S2_KERNEL_CASES[case])
    mix, x = s2_block(dtype, **kw)
    antipodal = mix.fused_order != list(range(mix.lmax + 1))
    assert antipodal == (case != "plain grid")
    facet.ops.use_fused(mix)
    ref, got = s2_value_and_grad(mix, x, False), s2_value_and_grad(mix, x, True)
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    for a, b in zip(ref, got, strict=True):
        assert a.abs().max() > 0
        assert torch.allclose(a, b, atol=tol * a.abs().max(), rtol=0)


@pytest.mark.parametrize("kind,res,paired", [("lebedev", (35,), True), ("gauss", (12, 24), True),
                                             ("gauss", (12, 23), False),
                                             ("soft", (18, 17), False)])
def test_antipodal_layout_pairs_every_point_with_its_antipode(kind, res, paired):
    from facet.s2 import antipodal_layout, s2_grid_matrices

    g, f = s2_grid_matrices(2, res, torch.float64, kind=kind)
    layout = antipodal_layout(g, f, 2)
    assert (layout is not None) == paired
    if not paired:
        return
    g_a, f_a, order = layout
    assert order == [0, 2, 1]
    half = g.shape[1] // 2
    sign = torch.tensor([1.0] * 6 + [-1.0] * 3, dtype=torch.float64)
    assert torch.equal(g_a[:, half:], g_a[:, :half] * sign[:, None])
    assert torch.equal(f_a[half:], f_a[:half] * sign[None, :])
    # the same quadrature: every column of the original matrices appears once (rows by parity)
    rows = [0, 4, 5, 6, 7, 8, 1, 2, 3]
    orig = g[rows].t()
    dist = torch.cdist(g_a.t(), orig, compute_mode="donot_use_mm_for_euclid_dist")
    assert dist.min(dim=1).values.max() < 1e-12
    assert sorted(dist.argmin(dim=1).tolist()) == list(range(g.shape[1]))
    weights = f_a[:, 0] / g_a[0]  # from_grid = Y w / (4 pi), to_grid = sqrt(4 pi) Y
    assert torch.allclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)


def test_fused_s2_backward_matches_finite_differences():
    mix, x = s2_block()
    mix.fused = True
    assert torch.autograd.gradcheck(mix, (x.requires_grad_(True),), eps=1e-6, atol=1e-7,
                                    rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["joint", "separate"])
@pytest.mark.parametrize("irreps", ["16x0e+8x1o+4x2e", "3x0e+2x0e+2x1o", "3x1o+2x2e", "5x0e"])
def test_fused_layer_norm_equals_the_torch_one(dtype, mode, irreps):
    """facet::block_norm (with and without the gain) = E3LayerNorm's torch formulation, values
    and gradients, for scalar-first irreps with one or two scalar blocks, none, or only
    scalars; rows of very different scale. The reference runs in float64 (the kernel sums in
    double: in float32 it is closer to it than torch's float32 formulation)."""
    torch.manual_seed(0)
    norm = E3LayerNorm(irreps, mode=mode)
    shapes = [(ir.dim, mul) for mul, ir in o3.Irreps(irreps)]
    scale = torch.logspace(-3, 2, 9, dtype=dtype).reshape(9, 1, 1)
    xs = [(torch.randn(9, d, m, dtype=dtype) * scale + 0.3).requires_grad_(True)
          for d, m in shapes]
    grads = [torch.randn(9, d, m, dtype=dtype) for d, m in shapes]
    gain = torch.randn(sum(m for _, m in shapes), dtype=dtype)
    # float32: centring rows of scale 1e-3 around 0.3 costs ~2e-5 of their precision
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    xs64 = [x.detach().double().requires_grad_(True) for x in xs]
    for g in (None, gain):
        norm.fused = False
        ref = norm.forward_dmajor(xs64, None if g is None else g.double())
        ref_grads = torch.autograd.grad(ref, xs64, [v.double() for v in grads])
        norm.fused = True
        y = norm.forward_dmajor(xs, g)
        y_grads = torch.autograd.grad(y, xs, grads)
        for a, b in zip(ref + list(ref_grads), y + list(y_grads), strict=True):
            assert b.dtype == dtype
            a, b = a.detach(), b.detach().double()
            assert torch.allclose(a, b, rtol=tol, atol=tol * float(a.abs().max()))


def test_fused_layer_norm_backward_matches_finite_differences():
    torch.manual_seed(1)
    norm = E3LayerNorm("4x0e+3x1o+2x2e")
    norm.fused = True
    xs = tuple(torch.randn(5, d, m, dtype=torch.float64, requires_grad=True)
               for d, m in ((1, 4), (3, 3), (5, 2)))
    gain = torch.randn(9, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *x: tuple(norm.forward_dmajor(list(x), gain)), xs)
    with pytest.raises(RuntimeError, match="for inference"):
        norm.forward_dmajor(list(xs), gain.requires_grad_(True))


def linear_reference(xs, weights, paths, alphas, out_shapes, right):
    """facet::irreps_linear's function (its header's formula) in plain torch."""
    n = xs[0].shape[0]
    outs = []
    for o in range(len(out_shapes) // 2):
        cols = out_shapes[2 * o + 1] if right is None else right.shape[1]
        outs.append(xs[0].new_zeros(n, out_shapes[2 * o], cols))
    for p, alpha in enumerate(alphas):
        t, c0, o, w, off = paths[5 * p : 5 * p + 5]
        x = xs[t]  # [n, comps, mul]
        d, m, mul = out_shapes[2 * o], out_shapes[2 * o + 1], x.shape[2]
        weight = weights[w].reshape(-1)[off : off + mul * m].reshape(mul, m)
        if right is not None:
            weight = weight @ right
        outs[o] = outs[o] + alpha * x[:, c0 : c0 + d] @ weight
    return outs


def linear_case(dtype, n=6, with_right=False):
    """Inputs of every kind the kernel reads: contiguous (read in place), channels strided
    (a transposed view: gathered), row-strided views (d > 1: gathered; d = 1: in place),
    component ranges of a wider tensor, two weights at offsets, one output no path reaches."""
    g = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, generator=g)

    xs = [rand(n, 3, 4),                       # [n, d=3, mul=4]
          rand(n, 5, 6).transpose(1, 2),       # [n, 6, 5], channels strided by 6
          rand(n, 4, 7)[:, 1:4, 1:6],          # [n, 3, 5] view, rows strided by 28
          rand(n, 9)[:, 2:6].unsqueeze(1)]     # [n, 1, 4] view, rows strided by 9
    weights = [rand(200), rand(90)]
    out_shapes = [3, 6, 1, 6, 5, 6]            # outputs (d, mul): 3x6, 1x6, 5x6 (no path)
    paths = [0, 0, 0, 0, 7,                    # x0 (components 0..2) -> out 0, weight 0 at 7
             1, 1, 0, 0, 40,                   # x1 components 1..3 -> out 0
             2, 0, 0, 1, 3,                    # x2 -> out 0, weight 1 at 3
             1, 4, 1, 0, 100,                  # x1 component 4 -> out 1
             3, 0, 1, 1, 50]                   # x3 -> out 1
    alphas = [0.5, -1.25, 2.0, 0.75, 1.0]
    right = rand(6, 2) if with_right else None
    return xs, weights, paths, alphas, out_shapes, right


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_right", [False, True])
def test_fused_linear_kernel_equals_its_formula(dtype, with_right):
    """facet::irreps_linear = the formula in torch (float64 reference), values and the inputs'
    gradients, for every kind of input layout; an output no path reaches is zero."""
    xs, weights, paths, alphas, out_shapes, right = linear_case(dtype,
                                                                          with_right=with_right)
    xs = [x.detach().requires_grad_(True) for x in xs]
    outs = torch.ops.facet.irreps_linear(xs, weights, paths, alphas, out_shapes, right)
    grads = [torch.randn(o.shape, dtype=dtype, generator=torch.Generator().manual_seed(4))
             for o in outs]
    got_grads = torch.autograd.grad(outs, xs, grads)
    xs64 = [x.detach().double().requires_grad_(True) for x in xs]
    ref = linear_reference(xs64, [w.double() for w in weights], paths, alphas,
                           out_shapes, None if right is None else right.double())
    # (the reference's zero output does not depend on the inputs)
    ref_grads = torch.autograd.grad(ref[:2], xs64, [v.double() for v in grads[:2]])
    assert float(outs[2].detach().abs().max()) == 0.0
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    for a, b in zip(ref + list(ref_grads), outs + list(got_grads), strict=True):
        assert b.dtype == dtype and a.shape == b.shape
        a, b = a.detach(), b.detach().double()
        assert torch.allclose(a, b, rtol=0, atol=tol * float(a.abs().max()))


def test_fused_linear_backward_matches_finite_differences_and_refuses_bad_plans():
    xs, weights, paths, alphas, out_shapes, right = linear_case(torch.float64, n=3,
                                                                          with_right=True)
    xs = tuple(x.detach().requires_grad_(True) for x in xs)

    def f(*x):
        return tuple(torch.ops.facet.irreps_linear(list(x), weights, paths, alphas, out_shapes,
                                                   right))

    assert torch.autograd.gradcheck(f, xs)
    bad = {"names an input": paths[:-5] + [9, 0, 1, 1, 50],
           "reads components": paths[:-5] + [1, 5, 0, 1, 0],
           "past the end of weight 1": paths[:-5] + [3, 0, 1, 1, 80]}
    for message, bad_paths in bad.items():
        with pytest.raises(RuntimeError, match=message):
            torch.ops.facet.irreps_linear(list(xs), weights, bad_paths, alphas, out_shapes,
                                          right)
    with pytest.raises(RuntimeError, match="for inference"):
        torch.ops.facet.irreps_linear(list(xs), [weights[0].requires_grad_(True), weights[1]],
                                      paths, alphas, out_shapes, right)


@pytest.mark.parametrize("row_start", [0, 2])
def test_fused_interaction_equals_the_torch_one(row_start):
    """Interaction with ``fused``: the tensor product's kernel, then both linear maps, the
    normalisation and the residual sum as one facet::irreps_linear call; the same values and
    gradients as its torch formulation, also for a row range of the input (a LAMMPS layer's
    prefix of atoms)."""
    from facet.layers import Interaction

    irreps = "8x0e+4x1o+2x2e"
    tp, (h, nbr, y, basis, _) = tp_and_inputs(irreps, irreps)
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        inter = Interaction(o3.Irreps(irreps), o3.Irreps.spherical_harmonics(2),
                            o3.Irreps("6x0e+3x1o+2x2e"), r_max=4.0, num_radial=basis.shape[2],
                            radial_basis="bspline", envelope_p=6, avg_num_neighbors=7.0,
                            radial_power=0.7)
    for p in inter.parameters():
        p.requires_grad_(False)
    n_out = nbr.shape[0] - row_start
    nbr, y, basis = nbr[:n_out], y[:n_out], basis[:n_out]
    slots = torch.zeros(n_out, nbr.shape[1], dtype=torch.long)  # only its shape is read
    r = torch.zeros(1, dtype=torch.float64)
    values = []
    for fused in (False, True):
        facet.ops.use_fused(inter, fused)
        assert inter.fused == fused and inter.tp.fused == fused
        hg, yg, bg = (t.detach().clone().requires_grad_(True) for t in (h, y, basis))
        out = inter.forward_slots(hg, nbr, yg, r, slots, row_start, bg)
        w = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
        values.append([out.detach(), *torch.autograd.grad((out * w).sum(), [hg, yg, bg])])
    for a, b in zip(*values, strict=True):
        assert a.abs().max() > 0
        assert torch.allclose(a, b, rtol=0, atol=1e-13 * float(a.abs().max()))


def test_s2_blocks_without_a_fused_kernel_stay_torch():
    for kw in ({"identity": True}, {"mlp_hidden": [6, 6]}):
        mix, x = s2_block(**kw)
        facet.ops.use_fused(mix)
        assert not mix.fusable and not mix.fused
    mix, x = s2_block()
    mix.fused = True
    mix.mlp.weights[1].requires_grad_(True)
    with pytest.raises(RuntimeError, match="for inference"):
        mix(x)


def test_calculator_default_is_fused_and_leaves_the_model_alone(monkeypatch):
    torch.manual_seed(0)
    model = facet.build_model(facet.facet_tiny(["Cu", "Au"]), torch.float64)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.symbols[::3] = "Au"
    atoms.rattle(0.05, seed=2)
    fused = FacetCalculator(model)
    plain = FacetCalculator(model, fused=False)
    assert fused.fused and not plain.fused
    # the fused single pass keeps far less memory: it is the CPU default up to 2^18 pairs
    assert (fused.potential.chunk_edges, fused.potential.single_pass_edges) == (32768, 1 << 18)
    assert (plain.potential.chunk_edges, plain.potential.single_pass_edges) == (4096, 16384)
    res = []
    for calc in (fused, plain):
        a = atoms.copy()
        a.calc = calc
        res.append((a.get_potential_energy(), a.get_forces(), a.get_stress()))
    assert abs(res[0][0] - res[1][0]) / len(atoms) < 1e-12
    assert np.abs(res[0][1] - res[1][1]).max() < 1e-11
    assert np.abs(res[0][2] - res[1][2]).max() < 1e-12
    assert not any(getattr(m, "fused", False) for m in model.modules())
    # TorchScript calls them too (same numbers); FACET_FUSED_KERNELS=0 leaves them out
    scripted = FacetCalculator(model, backend="torchscript")
    assert scripted.fused
    a = atoms.copy()
    a.calc = scripted
    assert np.abs(a.get_forces() - res[1][1]).max() < 1e-11
    monkeypatch.setenv("FACET_FUSED_KERNELS", "0")
    assert not FacetCalculator(model).fused


def test_calculator_evaluates_without_weight_gradients_and_restores_them():
    """During a calculation the weights carry no gradient flag (nothing is recorded for
    them); afterwards every flag is as it was, a weight update made after the calculator was
    built changes its results, and a training step on the same model still gets gradients."""
    torch.manual_seed(0)
    model = facet.build_model(facet.facet_tiny(["Cu"]), torch.float64)
    with torch.no_grad():  # off the ReZero start, so that forces depend on every layer
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    frozen_one = next(iter(model.parameters()))
    frozen_one.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    seen = []
    readout = model.readout

    def recording_readout(h, species):
        seen.append(any(p.requires_grad for p in model.parameters()))
        return readout(h, species)

    model.readout = recording_readout
    calc = FacetCalculator(model)
    calc.calculate(atoms, ["energy", "forces"])
    del model.readout
    assert seen == [False]
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not any(getattr(m, "fused", False) for m in model.modules())
    e0, f0 = calc.results["energy"], calc.results["forces"].copy()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)
    calc.calculate(atoms, ["energy", "forces"])
    assert abs(calc.results["energy"] - e0) > 1e-6
    reference = FacetCalculator(model, fused=False)
    reference.calculate(atoms, ["energy", "forces"])
    assert abs(calc.results["energy"] - reference.results["energy"]) < 1e-10
    assert np.abs(calc.results["forces"] - reference.results["forces"]).max() < 1e-10
    assert np.abs(calc.results["forces"] - f0).max() > 1e-8
    # a training step afterwards: gradients for every weight that wants one
    from facet.graph import build_graph

    g = build_graph(atoms, model.config.elements, model.r_max)
    energy = model(torch.as_tensor(g.species), torch.as_tensor(g.centre),
                   torch.as_tensor(g.neighbour), torch.as_tensor(g.rij)).sum()
    energy.backward()
    for p, wanted in zip(model.parameters(), flags, strict=True):
        assert (p.grad is not None) == wanted


def test_torchscript_file_loads_the_kernels_it_needs(tmp_path):
    """A fused TorchScript file loads in a fresh process (which builds nothing: the cache is
    warm) and gives the unfused file's numbers; an unfused one never needs the kernels."""
    from facet.freeze import script_potential, to_bytes

    torch.manual_seed(0)
    model = facet.build_model(facet.facet_tiny(["Cu"]), torch.float64)
    (tmp_path / "fused.pt").write_bytes(to_bytes(script_potential(model, fused=True)))
    (tmp_path / "plain.pt").write_bytes(to_bytes(script_potential(model, fused=False)))
    code = f"""
import torch
from ase.build import bulk
from facet.graph import build_graph
from facet.jitcompat import load
import facet.ops
plain = load({str(tmp_path / "plain.pt")!r})
assert not facet.ops._registered()
fused = load({str(tmp_path / "fused.pt")!r})
assert facet.ops._registered()
atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
atoms.rattle(0.05, seed=1)
g = build_graph(atoms, ["Cu"], 4.0, 0.1)
args = (torch.as_tensor(g.species), torch.as_tensor(g.centre), torch.as_tensor(g.neighbour),
        torch.as_tensor(g.rij), g.num_atoms)
(e1, d1), (e2, d2) = plain(*args), fused(*args)
print("DIFF", float((e1 - e2).abs().max()), float((d1 - d2).abs().max()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    de, dg = (float(v) for v in out.stdout.split("DIFF")[1].split())
    assert de < 1e-12 and dg < 1e-12


def test_missing_compiler_is_a_clear_error(tmp_path):
    env = {**os.environ, "FACET_OPS_CACHE": str(tmp_path), "CXX": str(tmp_path / "no-cxx")}
    code = ("import facet.ops, sys\n"
            "print('enabled', facet.ops.enabled())\n"
            "try:\n    facet.ops.load()\n"
            "except facet.ops.FacetOpsError as e:\n    print('ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert "enabled False" in out
    assert "ERROR cannot build Facet's fused kernels: no C++ compiler" in out
    assert "FACET_FUSED_KERNELS=0" in out


def test_package_with_newer_kernels_is_refused():
    from facet.aoti import compatibility_problems, package_metadata

    torch.manual_seed(0)
    model = facet.build_model(facet.facet_tiny(["Cu"]), torch.float64)
    meta = package_metadata(model, "cpu", ["energy_forces"], 1, fused=True)
    assert meta["fused_kernels"] == facet.ops.OPS_VERSION
    assert compatibility_problems(meta) == []
    assert facet.ops.OPS_VERSION >= 2  # the tensor product and the S2 grid MLP
    meta["fused_kernels"] = facet.ops.OPS_VERSION + 1
    assert any("fused kernels of version" in p for p in compatibility_problems(meta))


def test_plugin_has_the_same_kernel_version():
    text = (ROOT / "lammps_plugin" / "pair_facet.cpp").read_text()
    version = int(re.search(r"kFusedKernelsVersion = (\d+);", text).group(1))
    assert version == facet.ops.OPS_VERSION
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for source in facet.ops.SOURCES:
        assert f"facet/ops/{source.name}" in cmake


def test_mliap_object_defaults_follow_its_kernels(tmp_path):
    from facet.lammps.mliap import FacetMLIAP

    torch.manual_seed(0)
    ckpt = facet.save_model(facet.build_model(facet.facet_tiny(["Cu"]), torch.float64),
                            tmp_path / "tiny.pt")
    fused = FacetMLIAP.from_checkpoint(ckpt)
    plain = FacetMLIAP.from_checkpoint(ckpt, fused=False)
    assert fused.metadata["fused_kernels"] == facet.ops.OPS_VERSION
    assert plain.metadata["fused_kernels"] == 0
    assert (fused.single_pass_edges, plain.single_pass_edges) == (1 << 18, 16384)


def test_calculator_sizes_its_fused_single_pass_by_memory():
    """Above the default single pass (here lowered to 50 pairs) the calculator extends it to
    the pairs that fit its memory budget, once; not where the caller set the chunking."""
    from facet.memory import memory_sized_single_pass, single_pass_bytes_per_pair

    torch.manual_seed(0)
    model = facet.build_model(facet.facet_tiny(["Cu"]), torch.float64)
    with facet.ops.fused(model):
        bpp = single_pass_bytes_per_pair(model)
        assert memory_sized_single_pass(model, 7, budget=1000 * bpp) == 1000
        assert memory_sized_single_pass(model, 7, budget=3 * bpp) == 7
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    auto, fixed = FacetCalculator(model), FacetCalculator(model, chunk_edges=4096)
    for calc in (auto, fixed):
        calc.potential.single_pass_edges = 50
        calc.calculate(atoms, ["energy", "forces"])
    assert auto.potential.single_pass_edges > 10_000
    assert fixed.potential.single_pass_edges == 50
    assert np.abs(auto.results["forces"] - fixed.results["forces"]).max() < 1e-12


def test_fused_forces_and_stress_are_energy_derivatives_on_the_shipped_model():
    """Central differences of the fused calculator's energy (shipped model, float64) give its
    forces and its stress."""
    model = facet.load_model(ROOT / "examples" / "models" / "facet-emt-small.pt",
                             dtype=torch.float64)
    calc = FacetCalculator(model)
    assert calc.fused
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(2)
    atoms.symbols[::4] = "Au"
    atoms.rattle(0.05, seed=3)
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress(voigt=False)

    def energy(a):
        a.calc = calc
        return a.get_potential_energy()

    h = 1e-4
    for i, k in [(0, 0), (5, 1), (13, 2), (30, 0)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        assert abs(-(energy(plus) - energy(minus)) / (2 * h) - forces[i, k]) < 1e-6
    eps, volume = 1e-5, atoms.get_volume()
    for a_, b_ in [(0, 0), (1, 2)]:
        strained = []
        for sign in (1, -1):
            d = np.zeros((3, 3))
            d[a_, b_] = d[b_, a_] = sign * eps / (1 if a_ == b_ else 2)
            s_atoms = atoms.copy()
            s_atoms.set_cell(atoms.cell.array @ (np.eye(3) + d), scale_atoms=True)
            strained.append(energy(s_atoms))
        fd = (strained[0] - strained[1]) / (2 * eps) / volume
        assert abs(fd - stress[a_, b_]) < 1e-6
