"""The shipped examples run with the shipped model on 2 MPI ranks (short versions)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lammps_utils import REPO, env, mpirun, require_lammps

from facet.deploy.cli import main as deploy_main

pytestmark = [pytest.mark.lammps, pytest.mark.mpi, pytest.mark.slow]

SHIPPED = REPO / "examples" / "models" / "facet-emt-small.pt"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    require_lammps()
    out = tmp_path_factory.mktemp("examples") / "facet-emt-small-mliap.pt"
    assert deploy_main([str(SHIPPED), "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("deck", "extra"),
    [("relax/in.relax", ["-var", "maxiter", "20"]), ("md/in.nvt", ["-var", "steps", "10"]),
     ("alloy/in.alloy", ["-var", "steps", "5", "-var", "maxiter", "10"])],
)
@pytest.mark.parametrize("kokkos", [False, True], ids=["plain", "kokkos"])
def test_deck_runs_on_two_ranks(deployed, deck, extra, kokkos):
    lmp = require_lammps()
    path = REPO / "examples" / deck
    args = [str(lmp), "-in", path.name, "-var", "model", str(deployed), "-log", "none", *extra]
    if kokkos:
        args[1:1] = ["-k", "on", "t", "1", "-sf", "kk"]
        args += ["-var", "ghostneigh", "0", "-var", "ghost", "7"]
    proc = mpirun(2, args, cwd=path.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("Facet ML-IAP: kokkos (per-layer" if kokkos else "Facet ML-IAP: plain") in proc.stdout
    if deck.startswith("relax"):
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
        a = float(line.split("parameter")[1].split()[0])
        assert 3.6 < a < 4.2  # Cu3Au: EMT gives about 3.8 Å


def test_python_mpi_job(deployed):
    proc = mpirun(2, [sys.executable, str(REPO / "examples/python/relax_mpi.py"), str(deployed)],
                  cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranks: 2" in proc.stdout and "after:" in proc.stdout


def test_facet_deploy_check(tmp_path):
    require_lammps()
    proc = subprocess.run(
        [sys.executable, "-m", "facet.deploy.cli", str(SHIPPED), "-o",
         str(tmp_path / "m-mliap.pt"), "--check"],
        env=env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "LAMMPS run 0 vs ASE" in proc.stdout and "OK" in proc.stdout
