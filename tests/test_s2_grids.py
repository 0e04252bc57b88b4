"""The S2 layer's quadratures (``s2_grid``: soft, gauss, lebedev): exactness, equivariance,
old-checkpoint compatibility, TorchScript, and the default grid's bound on trained weights.

Reference values are derived independently: monomial integrals on the sphere from the Gamma
function, rotations from e3nn's Wigner matrices, the old SOFT matrices from e3nn's
``ToS2Grid``/``FromS2Grid`` directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomized_model, triclinic_alloy
from e3nn import o3

import facet
from facet.calculator import FacetCalculator
from facet.checkpoint import read_checkpoint
from facet.config import S2_DEFAULT_GRID, S2_DEFAULT_RES, FacetConfig
from facet.model import build_model, copy_parameters
from facet.s2 import S2Mixing, s2_grid_degree, s2_grid_matrices, s2_grid_points, s2_grid_size
from facet.symmetry import (
    ENERGY_BOUND,
    FORCE_BOUND,
    orthogonal_transforms,
    probe_structure,
    rotation_error,
    symmetry_error,
    transformed,
)

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "models" / "facet-emt-small.pt"

# one small and one default-sized grid of each kind
GRIDS = [
    ("soft", (10, 9)),
    ("soft", (18, 17)),
    ("gauss", (6, 12)),
    ("gauss", (12, 24)),
    ("lebedev", (11,)),
    ("lebedev", (35,)),
    (S2_DEFAULT_GRID, S2_DEFAULT_RES[S2_DEFAULT_GRID]),
]


def sphere_monomial_integral(a: int, b: int, c: int) -> float:
    """Exact integral of x^a y^b z^c over the unit sphere."""
    if a % 2 or b % 2 or c % 2:
        return 0.0
    g = math.gamma
    return 2.0 * g((a + 1) / 2) * g((b + 1) / 2) * g((c + 1) / 2) / g((a + b + c + 3) / 2)


def quadrature_error(xyz: torch.Tensor, w: torch.Tensor, degree: int) -> float:
    """Largest error of the quadrature over all monomials of exactly this degree."""
    worst = 0.0
    for a in range(degree + 1):
        for b in range(degree + 1 - a):
            c = degree - a - b
            q = float((w * xyz[:, 0] ** a * xyz[:, 1] ** b * xyz[:, 2] ** c).sum())
            worst = max(worst, abs(q - sphere_monomial_integral(a, b, c)))
    return worst


@pytest.mark.parametrize("kind,res", [g for g in GRIDS if g[0] != "soft"])
def test_quadrature_is_exact_to_its_degree(kind, res):
    xyz, w = s2_grid_points(kind, res)
    assert w.numel() == s2_grid_size(kind, res)
    assert torch.allclose(xyz.norm(dim=1), torch.ones(len(w), dtype=torch.float64))
    degree = s2_grid_degree(kind, res)
    for d in range(degree + 1):
        assert quadrature_error(xyz, w, d) < 1e-12, (kind, res, d)
    if kind == "gauss":  # and the claim is tight
        assert quadrature_error(xyz, w, degree + 1) > 1e-8


@pytest.mark.parametrize("kind,res", GRIDS)
def test_round_trip_is_exact_for_band_limited_input(kind, res):
    """to_grid then from_grid is the identity on coefficients up to lmax (SOFT: e3nn's
    quadrature weights are float32-accurate, ~1e-7)."""
    lmax = 2
    g, f = s2_grid_matrices(lmax, res, torch.float64, kind=kind)
    dim = (lmax + 1) ** 2
    assert g.shape == (dim, s2_grid_size(kind, res)) and f.shape == (g.shape[1], dim)
    tol = 1e-6 if kind == "soft" else 1e-12
    assert (g @ f - torch.eye(dim, dtype=torch.float64)).abs().max() < tol
    # and to_grid samples f(x) = sqrt(4 pi) sum c Y(x) (integral-normalised Y) at the points
    if kind != "soft":
        xyz, _ = s2_grid_points(kind, res)
        y = o3.spherical_harmonics(o3.Irreps.spherical_harmonics(lmax), xyz, True, "integral")
        assert torch.allclose(g, math.sqrt(4 * math.pi) * y.t(), atol=1e-13)


def test_soft_matrices_are_e3nn_ones():
    """The "soft" grid (every checkpoint before ``s2_grid``) is e3nn's, unchanged."""
    res = (12, 11)
    norm = torch.full((3,), math.sqrt(4 * math.pi), dtype=torch.float64)
    to_grid = o3.ToS2Grid(2, res, normalization=norm, dtype=torch.float64)
    from_grid = o3.FromS2Grid(res, 2, normalization=norm, dtype=torch.float64)
    g, f = s2_grid_matrices(2, res, torch.float64, kind="soft")
    c = torch.randn(5, 9, dtype=torch.float64)
    assert torch.allclose(c @ g, to_grid(c).reshape(5, -1), atol=1e-14)
    grid = torch.randn(5, *res, dtype=torch.float64)
    assert torch.allclose(grid.reshape(5, -1) @ f, from_grid(grid), atol=1e-14)


@pytest.mark.parametrize("kind,res", GRIDS)
def test_s2_block_with_identity_mlp_is_exactly_equivariant(kind, res):
    """Rotating the input features by D(R) rotates the block's output by D(R) (1e-10)."""
    torch.manual_seed(0)
    irreps = o3.Irreps("4x0e+3x1o+2x2e")
    with facet.model.default_dtype(torch.float64):
        block = S2Mixing(irreps, irreps, lmax=2, res=res, mlp_hidden=[8], heads=1,
                         identity=True, grid=kind)
    x = irreps.randn(6, -1, dtype=torch.float64)
    for q in orthogonal_transforms(3, seed=1).values():
        d = irreps.D_from_matrix(torch.as_tensor(q))
        err = (block(x @ d.T) - block(x) @ d.T).abs().max()
        assert err < 1e-10, (kind, res, err)


@pytest.mark.parametrize("kind,res", GRIDS)
def test_model_with_identity_mlp_is_exactly_o3_equivariant(kind, res):
    model = randomized_model(facet.facet_tiny(["Cu", "Au"], s2_grid=kind, s2_res=res,
                                              s2_identity=True))
    err = symmetry_error(model, triclinic_alloy(), n_rotations=2)
    assert err.energy_per_atom < 1e-10 and err.forces < 1e-10, err


@pytest.mark.parametrize("kind,res", [("gauss", (6, 12)), ("lebedev", (17,)),
                                      (S2_DEFAULT_GRID, S2_DEFAULT_RES[S2_DEFAULT_GRID])])
def test_inversion_is_exact_on_inversion_symmetric_grids(kind, res):
    """The points of Lebedev rules and of Gauss grids with an even alpha count come in pairs
    x, -x with equal weights, and features of parity (-1)^l are functions f with
    f_inv(x) = f(-x): the pointwise MLP commutes with that, so inversion is exact even with the
    grid MLP (rotations are not)."""
    xyz, w = s2_grid_points(kind, res)
    if kind == S2_DEFAULT_GRID == "soft":
        pytest.skip("the default grid is not inversion-symmetric")
    model = randomized_model(facet.facet_tiny(["Cu", "Au"], s2_grid=kind, s2_res=res))
    atoms = triclinic_alloy()
    calc = FacetCalculator(model)
    a, b = atoms.copy(), transformed(atoms, -np.eye(3))
    a.calc, b.calc = calc, calc
    assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-10
    assert np.abs(a.get_forces() + b.get_forces()).max() < 1e-10


def test_config_grid_option_and_old_checkpoints(tmp_path):
    cfg = facet.facet_s(["Cu"])
    assert cfg.s2_grid == S2_DEFAULT_GRID and cfg.s2_res == S2_DEFAULT_RES[S2_DEFAULT_GRID]
    assert facet.facet_tiny(["Cu"]).s2_grid == S2_DEFAULT_GRID
    assert FacetConfig.from_dict(cfg.to_dict()) == cfg
    # a config stored before the option existed: the SOFT grid at its stored resolution
    old = cfg.to_dict()
    del old["s2_grid"]
    old["s2_res"] = [12, 11]
    loaded = FacetConfig.from_dict(old)
    assert loaded.s2_grid == "soft" and loaded.s2_res == (12, 11)
    with pytest.raises(ValueError, match="s2_grid"):
        facet.facet_s(["Cu"], s2_grid="healpix")
    with pytest.raises(ValueError, match="does not fit"):
        facet.facet_s(["Cu"], s2_grid="lebedev", s2_res=(12, 11))
    with pytest.raises(ValueError, match="Lebedev"):
        build_model(facet.facet_tiny(["Cu"], s2_grid="lebedev", s2_res=(33,)))
    with pytest.raises(ValueError, match="needs degree"):
        build_model(facet.facet_tiny(["Cu"], s2_grid="gauss", s2_res=(2, 4)))


def test_checkpoint_from_before_the_grid_option_keeps_its_grid(tiny_config, tmp_path):
    """Same numbers as a model built explicitly with the SOFT grid at that resolution."""
    soft = randomized_model(facet.FacetConfig(**{**tiny_config.to_dict(), "s2_grid": "soft",
                                                 "s2_res": (10, 9)}))
    path = facet.save_model(soft, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["s2_grid"]
    torch.save(payload, path)
    loaded = facet.load_model(path)
    assert loaded.config.s2_grid == "soft" and loaded.config.s2_res == (10, 9)
    a, b = triclinic_alloy(), triclinic_alloy()
    a.calc, b.calc = FacetCalculator(soft), FacetCalculator(loaded)
    assert a.get_potential_energy() == b.get_potential_energy()
    np.testing.assert_array_equal(a.get_forces(), b.get_forces())


def test_shipped_checkpoint_loads_with_its_stored_grid():
    stored = read_checkpoint(SHIPPED)["config"]
    model = facet.load_model(SHIPPED, dtype=torch.float64)
    assert model.config.s2_grid == stored.get("s2_grid", "soft")
    assert list(model.config.s2_res) == list(stored["s2_res"])


@pytest.mark.parametrize("kind,res", [("gauss", (6, 12)),
                                      (S2_DEFAULT_GRID, S2_DEFAULT_RES[S2_DEFAULT_GRID])])
def test_torchscript_with_new_grids(kind, res):
    model = randomized_model(facet.facet_tiny(["Cu", "Au"], s2_grid=kind, s2_res=res))
    atoms = triclinic_alloy()
    a, b = atoms.copy(), atoms.copy()
    a.calc = FacetCalculator(model)
    b.calc = FacetCalculator(model, script=True)
    assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-10
    assert np.abs(a.get_forces() - b.get_forces()).max() < 1e-10


def shipped_weights_with_grid(kind: str, res: tuple[int, ...]) -> facet.Facet:
    """The shipped model's trained weights evaluated with another grid (float64)."""
    payload = read_checkpoint(SHIPPED)
    cfg = FacetConfig.from_dict({**payload["config"], "s2_grid": kind, "s2_res": list(res)})
    model = build_model(cfg, torch.float64)
    assert not copy_parameters(model, payload["state_dict"])
    return model.eval()


@pytest.mark.parametrize("kind", ["bulk", "slab"])
def test_default_grid_bound_on_trained_weights(kind):
    """Trained grid-MLP weights (the shipped model's) on the default grid stay within the
    bounds on rattled (0.1 and 0.15 Å) multi-element cells and slabs."""
    model = shipped_weights_with_grid(S2_DEFAULT_GRID, S2_DEFAULT_RES[S2_DEFAULT_GRID])
    elements = list(model.config.elements)
    worst = [0.0, 0.0]
    for rattle in (0.1, 0.15):
        for seed in range(2):
            atoms = probe_structure(elements, kind, seed=seed, rattle=rattle)
            de, df = rotation_error(model, atoms, seed=seed)
            worst = [max(worst[0], de), max(worst[1], df)]
    print(f"default grid, shipped weights, {kind}: {worst[0]:.1e} eV/atom, {worst[1]:.1e} eV/Å")
    assert worst[0] <= ENERGY_BOUND and worst[1] <= FORCE_BOUND


def test_default_grid_bound_on_random_facet_s():
    """Facet-S with randomly perturbed weights (two S2 layers of 64 channels)."""
    model = randomized_model(facet.facet_s(["Cu", "Au", "Ni"]))
    de, df = rotation_error(model, probe_structure(["Cu", "Au", "Ni"], "bulk", seed=0),
                            n_rotations=2)
    print(f"default grid, random Facet-S: {de:.1e} eV/atom, {df:.1e} eV/Å")
    assert de <= ENERGY_BOUND and df <= FORCE_BOUND


def test_finer_grids_alias_less():
    """The error falls with the quadrature degree (shipped weights, one hot-ish cell)."""
    atoms = probe_structure(list(read_checkpoint(SHIPPED)["elements"]), "bulk", rattle=0.15)
    errs = [rotation_error(shipped_weights_with_grid("lebedev", (d,)), atoms)[1]
            for d in (17, 29, 41)]
    assert errs[0] > errs[1] > errs[2], errs


def test_facet_info_reports_the_measured_rotation_error(capsys):
    import json

    from facet.cli.info import info_main

    assert info_main([str(SHIPPED), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    cfg = facet.load_model(SHIPPED).config
    assert d["s2_grid"].startswith(f"{cfg.s2_grid} {'x'.join(map(str, cfg.s2_res))} (")
    de, df = rotation_error(SHIPPED)
    r = d["rotation_error"]
    assert r["energy_per_atom"] == pytest.approx(de, rel=1e-6, abs=1e-15)
    assert r["forces"] == pytest.approx(df, rel=1e-6, abs=1e-15)
    assert r["within_bounds"] == (de <= ENERGY_BOUND and df <= FORCE_BOUND)
    assert info_main([str(SHIPPED)]) == 0
    assert "rotation_error" in capsys.readouterr().out
