"""The fused uvu convolution equals e3nn's TensorProduct followed by a scatter-sum."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from facet.layers import uvu_instructions
from facet.model import default_dtype
from facet.tensor_product import UVUTensorProduct


@pytest.mark.parametrize("irreps_in", ["16x0e", "8x0e+4x1o+2x2e", "6x0e+3x1e+2x2o+1x3o"])
@pytest.mark.parametrize("target", ["8x0e+4x1o+2x2e", "8x0e"])
def test_matches_e3nn_tensor_product(irreps_in, target):
    with default_dtype(torch.float64):
        sh = o3.Irreps.spherical_harmonics(3 if "3o" in irreps_in else 2)
        mid, ins = uvu_instructions(o3.Irreps(irreps_in), sh, o3.Irreps(target))
        ref = o3.TensorProduct(irreps_in, sh, mid, ins, shared_weights=False,
                               internal_weights=False)
        mine = UVUTensorProduct(irreps_in, sh, mid, [(a, b, c) for a, b, c, _, _ in ins])
    assert mine.weight_numel == ref.weight_numel
    g = torch.Generator().manual_seed(0)
    n_nodes, n_edges, n_out = 9, 60, 6
    h = torch.randn(n_nodes, o3.Irreps(irreps_in).dim, generator=g, dtype=torch.float64)
    neighbour = torch.randint(0, n_nodes, (n_edges,), generator=g)
    centre = torch.randint(0, n_out, (n_edges,), generator=g)
    y = torch.randn(n_edges, sh.dim, generator=g, dtype=torch.float64)
    basis = torch.randn(n_edges, 5, generator=g, dtype=torch.float64)
    coeff = torch.randn(5, ref.weight_numel, generator=g, dtype=torch.float64)
    expected = torch.zeros(n_out, mid.dim, dtype=torch.float64).index_add(
        0, centre, ref(h[neighbour], y, basis @ coeff)
    )
    got = mine(h, neighbour, centre, n_out, y, basis, coeff)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
