"""Checks of the project's LAMMPS build (deploy/build_lammps.sh).

Finds the install through $FACET_LMP (path to `lmp`) or the one-line file
`<venv>/facet-lammps-prefix` that the build script writes; skips when neither exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lammps

REPO = Path(__file__).resolve().parents[1]

DECK = """\
units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 4 0 4 0 4
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create 1.44 87287 loop geom
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
neighbor 0.3 bin
fix 1 all nve
thermo 10
run 20
print "FACET_RESULT $(pe:%.15g) $(ke:%.15g) $(press:%.15g)"
"""


def _find_lmp() -> tuple[Path | None, str]:
    env = os.environ.get("FACET_LMP")
    if env:
        lmp = Path(env)
        return (lmp, "") if lmp.is_file() else (None, f"FACET_LMP={env} does not exist")
    for venv in (Path(sys.prefix), REPO / ".venv"):
        f = venv / "facet-lammps-prefix"
        if f.is_file():
            lmp = Path(f.read_text().strip()) / "bin" / "lmp"
            if lmp.is_file():
                return lmp, ""
            return None, f"{f} points to {lmp.parent.parent}, which has no bin/lmp"
    return None, "no LAMMPS build found"


LMP, _why = _find_lmp()
if LMP is None:
    pytest.skip(
        f"{_why}: set FACET_LMP=/path/to/lmp or run deploy/build_lammps.sh "
        "(it writes .venv/facet-lammps-prefix)",
        allow_module_level=True,
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # lmp's embedded Python finds its prefix through the first python3 on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    env.update(OMP_NUM_THREADS="1", OMP_PROC_BIND="false")
    return env


def _run_deck(tmp_path: Path, nranks: int, extra: tuple[str, ...] = ()) -> tuple[float, ...]:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not found")
    deck = tmp_path / "in.lj"
    deck.write_text(DECK)
    quiet = ["-log", "none", "-nocite", "-echo", "none"]
    cmd = [mpirun, "-np", str(nranks), str(LMP), *extra, "-in", str(deck), *quiet]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    m = re.search(r"^FACET_RESULT (\S+) (\S+) (\S+)$", proc.stdout, re.M)
    assert m, f"no result line in output of {' '.join(cmd)}:\n{proc.stdout}"
    return tuple(float(v) for v in m.groups())


def _lmp_help() -> str:
    proc = subprocess.run([str(LMP), "-h"], env=_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_python_module_has_mliap_and_python():
    lammps = pytest.importorskip("lammps", reason="lammps Python module not in this venv")
    lmp = lammps.lammps(cmdargs=["-log", "none", "-nocite", "-screen", "none"])
    try:
        assert lmp.has_package("ML-IAP")
        assert lmp.has_package("PYTHON")
        assert lmp.has_mpi_support
    finally:
        lmp.close()


def test_lmp_lists_mliap():
    assert re.search(r"\bmliap\b", _lmp_help())


@pytest.mark.mpi
def test_lj_two_ranks_match_one(tmp_path):
    e1 = _run_deck(tmp_path, 1)
    e2 = _run_deck(tmp_path, 2)
    assert e1 == pytest.approx(e2, rel=1e-9, abs=1e-12)


@pytest.mark.mpi
@pytest.mark.kokkos
def test_lj_kokkos_two_ranks_match_plain(tmp_path):
    if "mliap/kk" not in _lmp_help():
        pytest.skip("this LAMMPS build has no KOKKOS (mliap/kk)")
    plain = _run_deck(tmp_path, 1)
    kk = _run_deck(tmp_path, 2, ("-k", "on", "t", "1", "-sf", "kk"))
    assert plain == pytest.approx(kk, rel=1e-9, abs=1e-12)
