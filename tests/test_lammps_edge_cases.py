"""Edge cases of the LAMMPS bridge on both paths: a rank with no atoms, a float32 model in a
float64 LAMMPS, a model deployed for CUDA on a CPU-only machine."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import randomized_model
from lammps_utils import require_lammps, run_driver

import facet
from facet.calculator import FacetCalculator
from facet.cli.deploy import main as deploy_main

pytestmark = [pytest.mark.lammps, pytest.mark.mpi]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    require_lammps()
    d = tmp_path_factory.mktemp("edge")
    model = randomized_model(facet.facet_tiny(["Cu", "Au"]), seed=21)
    facet.save_model(model, d / "model.pt")
    for dtype in ("float64", "float32"):
        assert deploy_main([str(d / "model.pt"), "-o", str(d / f"m-{dtype}.pt"), "--dtype",
                            dtype]) == 0
    assert deploy_main([str(d / "model.pt"), "-o", str(d / "m-cuda.pt"), "--device",
                        "cuda"]) == 0
    return d, model


def half_filled_cell() -> Atoms:
    """Atoms only in the lower half (x < 6 Å) of a 20 Å periodic box: with 2 or 3 ranks split
    along x, a rank owns no atoms (and with a deep shell may still see ghosts)."""
    rng = np.random.default_rng(4)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 2.3
    pos = grid + 0.1 * rng.standard_normal(grid.shape) + [0.5, 0.5, 0.5]
    atoms = Atoms(["Cu", "Au", "Cu"] * 9, positions=pos, cell=[20.0, 7.0, 7.0], pbc=True)
    return atoms


@pytest.mark.parametrize("kokkos", [False, True], ids=["plain", "kokkos"])
def test_rank_without_atoms(models, tmp_path, kokkos):
    d, model = models
    atoms = half_filled_cell()
    ase.io.write(tmp_path / "half.xyz", atoms)
    extra = ["--kokkos"] if kokkos else []
    res = run_driver(3, d / "m-float64.pt", tmp_path / "half.xyz", tmp_path / "out.json", *extra)
    assert any(local == 0 for local, _ in res["atom_counts"]), res["atom_counts"]
    ref = atoms.copy()
    ref.calc = FacetCalculator(model)
    assert abs(res["energy"] - ref.get_potential_energy()) / len(atoms) < 1e-8
    np.testing.assert_allclose(res["forces"], ref.get_forces(), atol=1e-6)


@pytest.mark.parametrize("kokkos", [False, True], ids=["plain", "kokkos"])
def test_float32_model_in_float64_lammps(models, tmp_path, kokkos):
    d, model = models
    from conftest import lammps_frame, triclinic_alloy

    atoms = lammps_frame(triclinic_alloy(seed=8))
    ase.io.write(tmp_path / "a.xyz", atoms)
    extra = ["--kokkos"] if kokkos else []
    res = run_driver(2, d / "m-float32.pt", tmp_path / "a.xyz", tmp_path / "o.json", *extra)
    ref = atoms.copy()
    ref.calc = FacetCalculator(facet.load_model(d / "model.pt", dtype=torch.float32),
                               dtype="float32")
    assert abs(res["energy"] - ref.get_potential_energy()) / len(atoms) < 1e-5
    np.testing.assert_allclose(res["forces"], ref.get_forces(), atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_model_on_cpu_machine_is_a_clear_error(models, tmp_path):
    d, _ = models
    from conftest import triclinic_alloy
    from lammps_utils import JOBS, mpirun

    ase.io.write(tmp_path / "a.xyz", triclinic_alloy())
    import sys

    proc = mpirun(1, [sys.executable, str(JOBS / "run_driver.py"), str(d / "m-cuda.pt"),
                      str(tmp_path / "a.xyz"), str(tmp_path / "o.json")], cwd=tmp_path)
    assert proc.returncode != 0
    assert "deployed for CUDA but torch sees no GPU" in proc.stdout + proc.stderr
    assert "--device cpu" in proc.stdout + proc.stderr
