"""Helpers for tests of the native plugin (`pair_style facet`): decks run by the `lmp`
executable on real MPI ranks, their thermo/dump output in ASE's frame and sign, and the ASE
reference they are compared with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lammps import Prism
from ase.io.lammpsdata import write_lammps_data
from lammps_utils import assert_matches_reference, mpirun

from facet.calculator import FacetCalculator
from facet.lammps.plugin import plugin_library

BAR_PER_EV_A3 = 1.6021765e6  # LAMMPS metal units: nktv2p (bar per eV/Å^3), not CODATA


def require_plugin() -> Path:
    lib = plugin_library()
    if lib is None:
        msg = "the plugin is not built: run ./setup.sh (deploy/build_plugin.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return lib


# -- running decks ---------------------------------------------------------------------------------

HEADER = """plugin load {lib}
units metal
atom_style atomic
atom_modify map yes
newton {newton}
boundary {boundary}
{before_read}
read_data {data}
{pair}
compute pe all pe/atom
compute sa all stress/atom NULL
compute vsum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
compute ca all centroid/stress/atom NULL
compute csum all reduce sum c_ca[1] c_ca[2] c_ca[3]
thermo_style custom step pe pxx pyy pzz pyz pxz pxy vol c_vsum[1] c_vsum[2] c_vsum[3] &
  c_vsum[6] c_vsum[5] c_vsum[4] c_csum[1] c_csum[2] c_csum[3]
thermo_modify format float %.15g
"""

DUMP = """dump {name} all custom 1 {name}.dump id x y z fx fy fz c_pe
dump_modify {name} sort id format float %.15g
"""


def pair_lines(model_file: Path, elements: list[str], extra: str = "") -> str:
    return f"pair_style facet {model_file} {extra}\npair_coeff * * {' '.join(elements)}"


def write_data(d: Path, atoms: Atoms, species: list[str], tag: str) -> Path:
    path = d / f"{tag}.data"
    write_lammps_data(path, atoms, specorder=species, masses=True, units="metal",
                      atom_style="atomic")
    return path


def run_lmp(d: Path, lmp_exe: Path, deck: str, nproc: int = 1, tag: str = "run",
            check: bool = True):
    (d / f"in.{tag}").write_text(deck)
    proc = mpirun(nproc, [str(lmp_exe), "-in", f"in.{tag}", "-log", f"log.{tag}"], cwd=d,
                  timeout=600)
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, out[-4000:]
    return proc.returncode, out


def thermo_rows(log: Path) -> list[np.ndarray]:
    """The first data row of every thermo block (one per run)."""
    lines = log.read_text().splitlines()
    rows = []
    for k, line in enumerate(lines):
        if line.split()[:2] == ["Step", "PotEng"]:
            rows.append(np.array(lines[k + 1].split(), dtype=float))
    return rows


def last_thermo_row(log: Path) -> np.ndarray:
    """The last data row of the last thermo block."""
    lines = log.read_text().splitlines()
    k = max(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    row = None
    for line in lines[k + 1:]:
        try:
            row = np.array(line.split(), dtype=float)
        except ValueError:
            break
    return row


def read_dump(path: Path) -> np.ndarray:
    return np.loadtxt(path, skiprows=9, ndmin=2)


def results(d: Path, atoms: Atoms, tag: str, dump: str | None = None,
            row: np.ndarray | None = None) -> dict:
    """Energy, per-atom energies, forces and stress (ASE frame/sign/order) of a run, plus the
    global virial and the sum of per-atom virials (LAMMPS frame, eV)."""
    if row is None:
        row = thermo_rows(d / f"log.{tag}")[0]
    dmp = read_dump(d / f"{dump or tag}.dump")
    prism = Prism(atoms.cell.array, pbc=atoms.pbc)
    p = np.zeros((3, 3))
    p[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] = row[2:8]
    p = p + np.triu(p, 1).T
    s = -(prism.rot_mat @ p @ prism.rot_mat.T) / BAR_PER_EV_A3
    vol = row[8]
    return {
        "energy": row[1],
        "energies": dmp[:, 7],
        "forces": prism.vector_to_ase(dmp[:, 4:7]),
        "stress": s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
        "ids": dmp[:, 0].astype(int),
        "positions": dmp[:, 1:4],
        # virial (eV): pressure * volume, and minus the sum of per-atom stresses (bar Å^3)
        "virial": row[2:8] * vol / BAR_PER_EV_A3,
        "virial_atoms": -row[9:15] / BAR_PER_EV_A3,
        "virial_centroid_diag": -row[15:18] / BAR_PER_EV_A3,
    }


def deck_for(lib: Path, data: Path, pair: str, body: str = "", boundary: str = "p p p",
             before_read: str = "", newton: str = "on", dump: str = "run") -> str:
    return (HEADER.format(lib=lib, newton=newton, boundary=boundary, before_read=before_read,
                          data=data, pair=pair)
            + DUMP.format(name=dump) + (body or "run 0\n"))


def ase_reference(model, atoms: Atoms, dtype: str = "float64") -> dict:
    a = atoms.copy()
    a.calc = FacetCalculator(model, dtype=dtype)
    return {"energy": a.get_potential_energy(), "energies": a.get_potential_energies(),
            "forces": a.get_forces(), "stress": a.get_stress() if a.pbc.all() else None}


def assert_ref(res: dict, ref: dict) -> None:
    if ref["stress"] is None:  # not periodic in every direction: ASE gives no stress
        ref = {**ref, "stress": res["stress"]}
    assert_matches_reference(res, ref["energy"], ref["energies"], ref["forces"], ref["stress"])
