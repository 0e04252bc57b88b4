"""The chunked, recomputing evaluation (facet.chunks) gives the single pass's numbers.

The single pass (one forward with autograd, one backward) is the reference; the recomputing
evaluation runs the forward without autograd and recomputes one chunk of one layer at a time in
the backward pass. Forced here with ``single_pass_edges=0`` and chunks much smaller than the
structure, on eager and TorchScript modules, periodic and with ghost atoms (hop pruning).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import randomized_model, triclinic_alloy

import facet
from facet.calculator import FacetCalculator
from facet.chunks import default_chunking, row_chunks
from facet.contract import FacetPotential
from facet.freeze import script_model, script_potential
from facet.graph import build_graph


def graph_tensors(atoms, model):
    g = build_graph(atoms, model.config.elements, model.r_max)
    return (torch.tensor(g.species), torch.tensor(g.centre), torch.tensor(g.neighbour),
            torch.tensor(g.rij))


@pytest.mark.parametrize("chunk_edges", [1, 7, 100, 10**6])
def test_row_chunks_cover_rows_and_edges(chunk_edges):
    counts = torch.tensor([3, 0, 5, 1, 0, 0, 9, 2, 4])
    rows, edges = row_chunks(counts, chunk_edges)
    assert rows[0] == 0 and rows[-1] == len(counts)
    assert all(b > a for a, b in zip(rows, rows[1:], strict=False))  # no empty chunk
    starts = np.concatenate([[0], np.cumsum(counts.numpy())])
    assert edges == [int(starts[r]) for r in rows]  # rows are never split
    for a, b, ea, eb in zip(rows, rows[1:], edges, edges[1:], strict=False):
        # a chunk exceeds the budget by less than its largest row (plus one budget when a
        # row is larger than the budget)
        assert eb - ea < 2 * chunk_edges + int(counts[a:b].max())
    if chunk_edges >= int(counts.sum()):
        assert rows == [0, len(counts)]
    else:
        assert len(rows) - 1 >= int(counts.sum()) // (2 * chunk_edges + int(counts.max()))


def test_row_chunks_edge_cases():
    assert row_chunks(torch.zeros(0, dtype=torch.long), 10) == ([0, 0], [0, 0])
    assert row_chunks(torch.tensor([4, 4]), 0) == ([0, 2], [0, 8])  # 0: one chunk


def test_default_chunking_per_device():
    cpu, cuda = default_chunking("cpu"), default_chunking("cuda:1")
    assert 0 < cpu[0] <= cpu[1] and 0 < cuda[0] <= cuda[1] and cuda[0] > cpu[0]


@pytest.fixture(scope="module")
def model3():
    """Three message-passing layers (two equivariant + the scalar one), three elements."""
    cfg = facet.facet_tiny(["Cu", "Au", "Ag"], hidden_irreps=["8x0e+4x1o+2x2e"] * 2)
    return randomized_model(cfg, seed=7)


@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "script"])
@pytest.mark.parametrize("chunk_edges", [13, 250])
def test_recomputing_equals_single_pass(model3, scripted, chunk_edges):
    atoms = triclinic_alloy(seed=4, repeat=(2, 2, 3))
    atoms.symbols[::5] = "Ag"
    species, centre, neighbour, rij = graph_tensors(atoms, model3)
    # pairs in a scrambled order: the evaluation sorts them by centre and must undo it
    perm = torch.randperm(len(centre), generator=torch.Generator().manual_seed(0))
    centre, neighbour, rij = centre[perm], neighbour[perm], rij[perm]
    n = len(atoms)
    ref = FacetPotential(model3, chunk_edges=0)
    pot = script_potential(model3) if scripted else FacetPotential(model3)
    pot.chunk_edges, pot.single_pass_edges = chunk_edges, 0
    for nlocal in (n, n // 3):  # all atoms local, and the rest as ghosts (hop pruning)
        e0, g0 = ref(species, centre, neighbour, rij, nlocal)
        e1, g1 = pot(species, centre, neighbour, rij, nlocal)
        assert g0.abs().max() > 1e-3  # the test can fail: forces are not trivially zero
        torch.testing.assert_close(e1, e0, atol=1e-12, rtol=0)
        torch.testing.assert_close(g1, g0, atol=1e-12, rtol=0)


def test_layer_backward_is_the_vjp_of_layer_forward(model3):
    atoms = triclinic_alloy(seed=1)
    atoms.symbols[1] = "Ag"
    species, centre, neighbour, rij = graph_tensors(atoms, model3)
    order = torch.argsort(centre, stable=True)
    centre, neighbour, rij = centre[order], neighbour[order], rij[order]
    n = len(atoms)
    m = script_model(model3)
    torch.manual_seed(0)
    h = torch.randn(n, model3.feature_dims[1], dtype=torch.float64)
    g_out = torch.randn(n, model3.feature_dims[2], dtype=torch.float64)
    out = m.layer_forward_chunked(1, h, rij, centre, neighbour, n, 17)
    x = rij.clone().requires_grad_(True)
    hh = h.clone().requires_grad_(True)
    sh, r = m.edge_features(x)
    ref = m.layer(1, hh, sh, r, centre, neighbour, n)
    torch.testing.assert_close(out, ref.detach(), atol=1e-12, rtol=0)
    g_x, g_h = torch.autograd.grad(ref, [x, hh], g_out)
    c_x, c_h = m.layer_backward_chunked(1, h, rij, centre, neighbour, n, g_out, 17, True)
    torch.testing.assert_close(c_x, g_x, atol=1e-12, rtol=0)
    torch.testing.assert_close(c_h, g_h, atol=1e-12, rtol=0)
    c_x2, c_h2 = m.layer_backward_chunked(1, h, rij, centre, neighbour, n, g_out, 17, False)
    torch.testing.assert_close(c_x2, g_x, atol=1e-12, rtol=0)
    assert c_h2.numel() == 0


def test_calculator_recomputing_equals_single_pass_with_isolated_atoms(model3):
    """Energy, per-atom energies, forces and stress; atoms without neighbours give chunks of
    rows without edges."""
    atoms = triclinic_alloy(seed=2)
    atoms.symbols[::3] = "Ag"
    cluster = Atoms(atoms.symbols, positions=atoms.positions, pbc=False)
    far = Atoms("CuAu", positions=[[40.0, 40.0, 40.0], [-40.0, 0.0, 0.0]])
    for struct in (atoms, cluster + far):
        results = []
        for kw in ({"chunk_edges": 0}, {"chunk_edges": 11, "single_pass_edges": 0}):
            a = struct.copy()
            a.calc = FacetCalculator(model3, **kw)
            stress = a.get_stress() if a.pbc.all() else np.zeros(6)
            results.append((a.get_potential_energies(), a.get_forces(), stress))
        for ref, got in zip(results[0], results[1], strict=True):
            np.testing.assert_allclose(got, ref, atol=1e-12, rtol=0)


def test_recomputing_keeps_less_memory_alive(model3):
    """The peak of what autograd keeps alive for the backward pass: the whole graph's
    activations in a single pass, one chunk's with recomputation."""
    atoms = triclinic_alloy(seed=3, repeat=(3, 3, 3))
    species, centre, neighbour, rij = graph_tensors(atoms, model3)
    n = len(atoms)

    def peak_saved_bytes(pot) -> int:
        alive = peak = 0

        class Held:
            def __init__(self, t: torch.Tensor) -> None:
                nonlocal alive, peak
                self.t, self.size = t, t.numel() * t.element_size()
                alive += self.size
                peak = max(peak, alive)

            def __del__(self) -> None:
                nonlocal alive
                alive -= self.size

        with torch.autograd.graph.saved_tensors_hooks(Held, lambda held: held.t):
            pot(species, centre, neighbour, rij, n)
        return peak

    single = peak_saved_bytes(FacetPotential(model3, chunk_edges=0))
    chunked = peak_saved_bytes(FacetPotential(model3, chunk_edges=64, single_pass_edges=0))
    assert chunked < single / 5  # measured: 9x less at 108 atoms, 64-pair chunks
