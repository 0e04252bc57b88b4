"""IrrepsLinear (facet.linear) against e3nn's o3.Linear with the same weights: values and
gradients (inputs and weights), its block and component-major forms, and TorchScript."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from facet import jitcompat
from facet.linear import IrrepsLinear

CASES = [
    ("4x0e+2x1o", "3x0e+1x1o"),
    ("128x0e+64x1o+32x2e", "128x0e+64x1o+32x2e"),
    # repeated irreps on both sides, an output irrep no input reaches (zeros)
    ("8x0e+4x1o+8x0e+2x2e", "8x0e+4x1o+4x2e+2x1e"),
    # the tensor product's output of a Facet layer
    ("128x0e+64x0e+32x0e+128x1o+64x1o+64x1o+32x1o+128x2e+64x2e+32x2e+32x2e",
     "128x0e+64x1o+32x2e"),
]


def pair(irreps_in: str, irreps_out: str, seed: int = 0):
    torch.manual_seed(seed)
    lin = IrrepsLinear(irreps_in, irreps_out).double()
    ref = o3.Linear(irreps_in, irreps_out).double()
    ref.load_state_dict(lin.state_dict())
    return lin, ref


@pytest.mark.parametrize("irreps_in,irreps_out", CASES)
def test_same_function_and_gradients_as_e3nn(irreps_in, irreps_out):
    lin, ref = pair(irreps_in, irreps_out)
    x = torch.randn(7, o3.Irreps(irreps_in).dim, dtype=torch.float64)
    results = []
    for module in (lin, ref):
        xx = x.clone().requires_grad_(True)
        y = module(xx)
        w = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).reshape(y.shape)
        results.append([y.detach(), *torch.autograd.grad((y * w).sum(), [xx, module.weight])])
    for name, a, b in zip(["value", "d/dx", "d/dweight"], *results, strict=True):
        assert a.abs().max() > 0, name
        assert torch.allclose(a, b, atol=1e-13 * a.abs().max(), rtol=0), name


@pytest.mark.parametrize("irreps_in,irreps_out", CASES)
def test_block_and_component_major_forms(irreps_in, irreps_out):
    lin, ref = pair(irreps_in, irreps_out)
    n = 5
    x = torch.randn(n, o3.Irreps(irreps_in).dim, dtype=torch.float64)
    expected = ref(x)
    blocks = lin.forward_blocks(lin.split(x))
    assert torch.allclose(torch.cat([b.reshape(n, -1) for b in blocks], dim=1), expected,
                          atol=1e-13, rtol=0)
    dmajor = lin.forward_dmajor(lin.split(x), None)
    for b, d in zip(blocks, dmajor, strict=True):
        assert torch.allclose(b.transpose(1, 2), d, atol=1e-13, rtol=0)


@pytest.mark.parametrize("irreps_in,irreps_out", [
    ("128x0e+64x1o+32x2e", "64x0e+64x1o+64x2e"),   # an S2 block's projection up
    ("8x0e+4x1o+8x0e+2x2e", "6x0e+6x1o+6x2e+6x3o"),  # 3o: no input reaches it
])
def test_component_major_form_with_a_channel_map_after(irreps_in, irreps_out):
    """forward_dmajor(blocks, right) = the blocks [n, dim, mul] @ right, for outputs of one
    multiplicity (the S2 block folds its MLP's first layer in this way)."""
    lin, ref = pair(irreps_in, irreps_out)
    n = 4
    x = torch.randn(n, o3.Irreps(irreps_in).dim, dtype=torch.float64)
    mul = o3.Irreps(irreps_out)[0].mul
    right = torch.randn(mul, 3, dtype=torch.float64)
    got = lin.forward_dmajor(lin.split(x), right)
    start = 0
    y = ref(x)
    for (m, ir), g in zip(o3.Irreps(irreps_out), got, strict=True):
        block = y[:, start : start + m * ir.dim].reshape(n, m, ir.dim)
        start += m * ir.dim
        assert torch.allclose(g, block.transpose(1, 2) @ right, atol=1e-12, rtol=0)


def test_scripts_and_loads_e3nn_state():
    lin = IrrepsLinear("4x0e+2x1o", "3x0e+1x1o")
    ref = o3.Linear("4x0e+2x1o", "3x0e+1x1o")
    lin.load_state_dict(ref.state_dict())  # checkpoints written with o3.Linear load
    scripted = jitcompat.script(lin)
    x = torch.randn(3, 10)
    assert torch.allclose(scripted(x), ref(x), atol=1e-6)
