"""The shipped examples run with the shipped model on 2 MPI ranks (short versions)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lammps_utils import REPO, env, mpirun, require_lammps
from plugin_utils import require_plugin

from facet.cli.deploy import main as deploy_main

pytestmark = [pytest.mark.lammps, pytest.mark.mpi, pytest.mark.slow]

SHIPPED = REPO / "examples" / "models" / "facet-emt-small.pt"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    require_lammps()
    out = tmp_path_factory.mktemp("examples") / "facet-emt-small-mliap.pt"
    assert deploy_main([str(SHIPPED), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def deployed_plugin(tmp_path_factory):
    """The shipped model as the native plugin's file, and the built plugin (the main job)."""
    require_lammps()
    lib = require_plugin()
    out = tmp_path_factory.mktemp("examples") / "facet-emt-small-plugin.pt"
    assert deploy_main([str(SHIPPED), "--format", "plugin", "-o", str(out)]) == 0
    return lib, out


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
        assert 3.6 < a < 4.2  # Cu3Au: EMT gives 3.708 Å


@pytest.mark.parametrize("runtime", ["plugin", "kokkos"])
def test_main_job_relaxation_converges_to_the_ase_minimum(request, runtime):
    """The main job's deck on 2 ranks (the native plugin, as ./setup.sh runs it, and the ML-IAP
    KOKKOS path) stops on a tolerance, not on maxiter, at the lattice parameter of an ASE cell
    relaxation of the same model (ideal L1_2 Cu3Au)."""
    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from lammps_utils import has_kokkos

    from facet.calculator import FacetCalculator

    lmp = require_lammps()
    path = REPO / "examples" / "relax" / "in.relax"
    if runtime == "plugin":
        lib, model = request.getfixturevalue("deployed_plugin")
        args = [str(lmp), "-in", path.name, "-var", "style", "plugin", "-var", "plugin",
                str(lib), "-var", "model", str(model), "-log", "none"]
    else:
        if not has_kokkos():
            pytest.skip("this LAMMPS build has no KOKKOS (deploy/build_lammps.sh --kokkos)")
        args = [str(lmp), "-k", "on", "t", "1", "-sf", "kk", "-in", path.name, "-var", "model",
                str(request.getfixturevalue("deployed")), "-var", "ghostneigh", "0",
                "-var", "ghost", "7", "-log", "none"]
    proc = mpirun(2, args, cwd=path.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    criterion = next(x for x in proc.stdout.splitlines() if "Stopping criterion" in x)
    assert "tolerance" in criterion, criterion
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    a_lammps = float(line.split("parameter")[1].split()[0])
    atoms = bulk("Cu", "fcc", a=3.85, cubic=True)
    atoms.symbols[0] = "Au"
    atoms.calc = FacetCalculator(SHIPPED)
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-5, steps=200)
    a_ase = atoms.cell.cellpar()[0]
    assert abs(a_lammps - a_ase) < 2e-4, (a_lammps, a_ase)


def test_relax_deck_refuses_an_unknown_style(deployed):
    lmp = require_lammps()
    path = REPO / "examples" / "relax" / "in.relax"
    proc = mpirun(1, [str(lmp), "-in", path.name, "-var", "style", "pair", "-var", "model",
                      str(deployed), "-log", "none"], cwd=path.parent)
    assert proc.returncode != 0
    assert "style must be plugin or mliap, not pair" in proc.stdout + proc.stderr


def test_python_mpi_job(deployed):
    proc = mpirun(2, [sys.executable, str(REPO / "examples/python/relax_mpi.py"), str(deployed)],
                  cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranks: 2" in proc.stdout and "after:" in proc.stdout


def test_facet_deploy_check(tmp_path):
    require_lammps()
    proc = subprocess.run(
        [sys.executable, "-m", "facet.cli.deploy", str(SHIPPED), "-o",
         str(tmp_path / "m-mliap.pt"), "--check"],
        env=env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "LAMMPS run 0 vs ASE" in proc.stdout and "OK" in proc.stdout
