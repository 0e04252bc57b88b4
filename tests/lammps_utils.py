"""Helpers for tests that run the project's LAMMPS build (real `lmp`, real MPI ranks)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = Path(__file__).resolve().parent / "lammps_jobs"


def lammps_prefix() -> Path | None:
    if os.environ.get("FACET_LAMMPS_PREFIX"):
        return Path(os.environ["FACET_LAMMPS_PREFIX"])
    f = REPO / ".venv" / "facet-lammps-prefix"
    return Path(f.read_text().strip()) if f.exists() else None


def require_lammps() -> Path:
    """The `lmp` executable; skip (locally) or fail (CI) when the build is missing."""
    prefix = lammps_prefix()
    lmp = prefix / "bin" / "lmp" if prefix else None
    try:
        import lammps  # noqa: F401
    except ImportError:
        lmp = None
    if lmp is None or not lmp.exists():
        msg = "no LAMMPS build found: run ./setup.sh (deploy/build_lammps.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return lmp


@functools.cache
def has_kokkos() -> bool:
    """Whether the project's LAMMPS build has the KOKKOS package (asked once per session)."""
    import lammps

    lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    try:
        return bool(lmp.has_package("KOKKOS"))
    finally:
        lmp.close()


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}:{e.get('PATH', '')}"
    e.setdefault("OMP_NUM_THREADS", "1")
    e.setdefault("OMP_PROC_BIND", "false")
    return e


def mpirun(nproc: int, args: list[str], cwd: Path, timeout: float = 600):
    """Run ``args`` on ``nproc`` MPI ranks; returns the CompletedProcess (no check)."""
    launcher = shutil.which("mpirun") or "mpirun"
    return subprocess.run(
        [launcher, "-np", str(nproc), *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_driver(nproc: int, model: Path, structure: Path, out: Path, *extra: str):
    proc = mpirun(
        nproc,
        [sys.executable, str(JOBS / "run_driver.py"), str(model), str(structure), str(out),
         *extra],
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    data = json.loads(out.read_text())
    meta = {k: data.pop(k) for k in ("path", "atom_counts", "evaluations")}
    return {**{k: np.asarray(v) for k, v in data.items()}, **meta}


def assert_matches_reference(res: dict, energy: float, energies, forces, stress) -> None:
    """A LAMMPS result equals the reference at the float64 parity tolerances: energy 1e-8
    eV/atom, per-atom energies 1e-8 eV, forces 1e-6 eV/Å, stress 1e-6 eV/Å^3."""
    assert abs(res["energy"] - energy) / len(forces) < 1e-8
    np.testing.assert_allclose(res["energies"], energies, atol=1e-8)
    np.testing.assert_allclose(res["forces"], forces, atol=1e-6)
    np.testing.assert_allclose(res["stress"], stress, atol=1e-6)


# -- input decks run by the `lmp` executable ---------------------------------------------------

DECK_RESULTS = """
compute facet_pe all pe/atom
variable facet_e equal pe
run 0
print "FACET_ENERGY $(v_facet_e:%.16g)"
write_dump all custom {dump} id type x y z fx fy fz c_facet_pe modify sort id format float %.16g
"""


def run_deck(d: Path, lmp: Path, body: str, nproc: int = 2, kokkos: bool = False,
             tag: str = "deck", timeout: float = 300, results: bool = True,
             extra_env: dict[str, str] | None = None):
    """Run an input deck (``body``, then ``run 0`` and a dump of every atom when ``results``)
    with the `lmp` executable on ``nproc`` MPI ranks. Returns ``(proc, out)``: the finished
    process (stdout + stderr in ``out``), whatever its exit code."""
    deck = body + (DECK_RESULTS.format(dump=d / f"{tag}.dump") if results else "")
    (d / f"in.{tag}").write_text(deck)
    args = [str(lmp), "-in", f"in.{tag}", "-log", f"log.{tag}"]
    if kokkos:
        args[1:1] = ["-k", "on", "t", "1", "-sf", "kk"]
    launcher = shutil.which("mpirun") or "mpirun"
    e = env()
    e.update(extra_env or {})
    proc = subprocess.run([launcher, "-np", str(nproc), *args], cwd=d, env=e,
                          capture_output=True, text=True, timeout=timeout)
    return proc, proc.stdout + proc.stderr


def read_deck_results(d: Path, out: str, tag: str = "deck") -> dict:
    """What ``run_deck`` wrote: energy (eV), and per atom id: type, positions (Å), forces
    (eV/Å), energies (eV); plus the box (orthogonal: lengths, lower corner) and periodicity."""
    energy = float(next(line.split()[1] for line in out.splitlines()
                        if line.startswith("FACET_ENERGY")))
    lines = (d / f"{tag}.dump").read_text().splitlines()
    bounds_at = lines.index(next(line for line in lines if line.startswith("ITEM: BOX BOUNDS")))
    periodic = [flag == "pp" for flag in lines[bounds_at].split()[3:6]]
    box = np.array([[float(v) for v in lines[bounds_at + 1 + k].split()[:2]] for k in range(3)])
    table = np.loadtxt(lines[bounds_at + 5:], ndmin=2)
    return {"energy": energy, "types": table[:, 1].astype(int), "positions": table[:, 2:5],
            "forces": table[:, 5:8], "energies": table[:, 8], "box": box, "pbc": periodic}


def atoms_from_results(res: dict, elements_by_type: list[str]):
    """The dumped configuration as ASE ``Atoms`` (orthogonal box, LAMMPS' frame)."""
    from ase import Atoms

    box = res["box"]
    symbols = [elements_by_type[t - 1] for t in res["types"]]
    return Atoms(symbols, positions=res["positions"] - box[:, 0], cell=np.diag(box[:, 1] -
                 box[:, 0]), pbc=res["pbc"])
