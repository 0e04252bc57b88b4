"""Helpers for tests that run the project's LAMMPS build (real `lmp`, real MPI ranks)."""

from __future__ import annotations

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
