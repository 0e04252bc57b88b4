"""The KOKKOS ML-IAP path (per-layer halo exchange), run on a CPU-only KOKKOS LAMMPS build.

`-k on t N -sf kk` switches `pair_style mliap` to `mliap/kk`, whose data offers
forward/reverse_exchange: Facet then computes features for local atoms only and exchanges them
between layers. Must equal the plain path and the ASE calculator (float64 tolerances).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import lammps_frame, randomized_model, triclinic_alloy
from lammps_utils import (
    JOBS,
    assert_matches_reference,
    has_kokkos,
    mpirun,
    require_lammps,
    run_driver,
)

import facet
from facet.calculator import FacetCalculator
from facet.cli.deploy import main as deploy_main

pytestmark = [pytest.mark.lammps, pytest.mark.kokkos, pytest.mark.mpi]


@pytest.fixture(scope="module")
def kk_workdir(tmp_path_factory):
    require_lammps()
    if not has_kokkos():
        pytest.skip("this LAMMPS build has no KOKKOS (deploy/build_lammps.sh --kokkos)")
    d = tmp_path_factory.mktemp("kokkos")
    model = randomized_model(facet.facet_tiny(["Cu", "Au", "Ag"]), seed=11)
    facet.save_model(model, d / "model.pt")
    assert deploy_main([str(d / "model.pt"), "-o", str(d / "model-mliap.pt")]) == 0
    # the same model forced onto the chunked, recomputing evaluation at every call
    assert deploy_main([str(d / "model.pt"), "-o", str(d / "chunked-mliap.pt"),
                        "--chunk-edges", "150", "--single-pass-edges", "0"]) == 0
    atoms = lammps_frame(triclinic_alloy(seed=2, repeat=(3, 3, 3)))
    atoms.symbols[::5] = "Ag"
    import ase.io

    ase.io.write(d / "alloy.xyz", atoms)
    ref = atoms.copy()
    ref.calc = FacetCalculator(model)
    expected = {"energy": ref.get_potential_energy(), "forces": ref.get_forces(),
                "stress": ref.get_stress(), "energies": ref.get_potential_energies()}
    return d, expected, len(atoms)


@pytest.mark.parametrize("nproc", [1, 2, 3])
def test_kokkos_path_matches_ase(kk_workdir, nproc):
    d, ref, n = kk_workdir
    res = run_driver(nproc, d / "model-mliap.pt", d / "alloy.xyz", d / f"kk{nproc}.json",
                     "--kokkos")
    assert res["path"].startswith("kokkos (per-layer halo exchange)")
    assert res["evaluations"] == ["single pass"] * nproc
    # features are computed for local atoms only
    assert all(local == computed for local, computed in res["atom_counts"])
    assert_matches_reference(res, ref["energy"], ref["energies"], ref["forces"], ref["stress"])


@pytest.mark.parametrize("nproc", [1, 2])
def test_kokkos_recomputing_evaluation_matches_ase(kk_workdir, nproc):
    d, ref, n = kk_workdir
    res = run_driver(nproc, d / "chunked-mliap.pt", d / "alloy.xyz", d / f"kkc{nproc}.json",
                     "--kokkos")
    assert res["path"].startswith("kokkos (per-layer halo exchange)")
    assert res["evaluations"] == ["recomputing"] * nproc
    assert_matches_reference(res, ref["energy"], ref["energies"], ref["forces"], ref["stress"])


def test_kokkos_path_with_two_threads(kk_workdir, monkeypatch):
    d, ref, n = kk_workdir
    monkeypatch.setenv("FACET_KOKKOS_THREADS", "2")
    res = run_driver(1, d / "model-mliap.pt", d / "alloy.xyz", d / "kk_t2.json", "--kokkos")
    assert abs(res["energy"] - ref["energy"]) / n < 1e-8
    np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-6)


def test_kokkos_nve_same_on_1_and_2_ranks(kk_workdir):
    d, _, _ = kk_workdir
    runs = [
        run_driver(p, d / "model-mliap.pt", d / "alloy.xyz", d / f"kknve{p}.json", "--kokkos",
                   "--task", "nve")
        for p in (1, 2)
    ]
    assert np.abs(runs[0]["positions"] - runs[1]["positions"]).max() < 1e-8


@pytest.mark.parametrize("nproc", [1, 2])
def test_exchange_primitives(kk_workdir, nproc):
    d = kk_workdir[0]
    proc = mpirun(nproc, [sys.executable, str(JOBS / "exchange_job.py")], cwd=d)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "EXCHANGE OK" in proc.stdout
