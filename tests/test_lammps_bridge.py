"""LAMMPS (`pair_style mliap unified`) == ASE calculator, on 1, 2 and 4 MPI ranks.

Real LAMMPS built by deploy/build_lammps.sh, real TorchScript files from facet-deploy, real
`mpirun` ranks. Tolerances (float64): energy 1e-8 eV/atom, forces 1e-6 eV/Å, stress 1e-6 eV/Å^3.
"""

from __future__ import annotations

import subprocess

import ase.io
import numpy as np
import pytest
import torch
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from conftest import lammps_frame, randomized_model, triclinic_alloy
from lammps_utils import assert_matches_reference, env, mpirun, require_lammps, run_driver

import facet
from facet.calculator import FacetCalculator
from facet.cli.deploy import main as deploy_main

pytestmark = [pytest.mark.lammps]


@pytest.fixture(scope="module")
def lmp_exe():
    return require_lammps()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, lmp_exe):
    """A random 2-layer tiny model (Cu, Au, Ag), its deployed ML-IAP file and a structure."""
    d = tmp_path_factory.mktemp("bridge")
    cfg = facet.facet_tiny(["Cu", "Au", "Ag"])
    model = randomized_model(cfg, seed=3)
    facet.save_model(model, d / "model.pt")
    assert deploy_main([str(d / "model.pt"), "-o", str(d / "model-mliap.pt")]) == 0
    assert deploy_main([str(d / "model.pt"), "-o", str(d / "chunked-mliap.pt"),
                        "--chunk-edges", "300", "--single-pass-edges", "0"]) == 0
    atoms = lammps_frame(triclinic_alloy(seed=5, repeat=(3, 3, 3)))
    atoms.symbols[::7] = "Ag"
    ase.io.write(d / "alloy.xyz", atoms)
    return d, model, atoms


def ase_reference(model, atoms):
    a = atoms.copy()
    a.calc = FacetCalculator(model)
    return a.get_potential_energy(), a.get_potential_energies(), a.get_forces(), a.get_stress()


@pytest.mark.mpi
@pytest.mark.parametrize("nproc", [1, 2, 4])
def test_run0_matches_ase(workdir, nproc):
    d, model, atoms = workdir
    res = run_driver(nproc, d / "model-mliap.pt", d / "alloy.xyz", d / f"eval{nproc}.json")
    assert res["path"].startswith("plain")
    assert_matches_reference(res, *ase_reference(model, atoms))


@pytest.mark.mpi
def test_recomputing_evaluation_matches_ase(workdir):
    """The chunked, recomputing evaluation (forced at every call) on 2 ranks: ghost atoms, hop
    pruning and chunks together."""
    d, model, atoms = workdir
    res = run_driver(2, d / "chunked-mliap.pt", d / "alloy.xyz", d / "evalc.json")
    assert res["evaluations"] == ["recomputing"] * 2
    assert_matches_reference(res, *ase_reference(model, atoms))


def run_lmp_deck(d, lmp_exe, atoms, species, pair_lines, nproc=2, kokkos=False, tag="run0"):
    """Run ``pair_lines`` on ``atoms`` with the `lmp` executable (run 0). Returns the energy (eV),
    the stress (ASE order, eV/Å^3), the forces and per-atom energies (eV/Å, eV; ASE frame,
    ordered as ``atoms``)."""
    from ase.calculators.lammps import Prism
    from ase.io.lammpsdata import write_lammps_data

    write_lammps_data(d / f"{tag}.data", atoms, specorder=species, masses=True, units="metal",
                      atom_style="atomic")
    (d / f"in.{tag}").write_text(
        f"""units metal
atom_style atomic
newton on
boundary p p p
read_data {d / f'{tag}.data'}
{pair_lines}
compute pe all pe/atom
thermo_style custom step pe pxx pyy pzz pyz pxz pxy
thermo_modify format float %.15g
dump f all custom 1 {d / f'{tag}.dump'} id fx fy fz c_pe
dump_modify f sort id format float %.15g
run 0
"""
    )
    args = [str(lmp_exe), "-in", f"in.{tag}", "-log", f"log.{tag}"]
    if kokkos:
        args[1:1] = ["-k", "on", "t", "1", "-sf", "kk"]
    proc = mpirun(nproc, args, cwd=d)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (d / f"log.{tag}").read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    vals = np.array(lines[k + 1].split()[1:], dtype=float)
    dump = np.loadtxt(d / f"{tag}.dump", skiprows=9)
    prism = Prism(atoms.cell.array)
    forces = prism.vector_to_ase(dump[:, 1:4])
    p = np.zeros((3, 3))
    p[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] = vals[1:]
    p = p + np.triu(p, 1).T
    s = -(prism.rot_mat @ p @ prism.rot_mat.T) / 1.6021765e6  # bar -> eV/Å^3, LAMMPS' nktv2p
    return vals[0], s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], forces, dump[:, 4]


@pytest.mark.mpi
def test_lmp_executable_deck_matches_ase(workdir, lmp_exe):
    """The `lmp` executable with the printed deck lines, 2 ranks, forces dumped by atom id."""
    d, model, atoms = workdir
    lines = f"pair_style mliap unified {d / 'model-mliap.pt'} 1\npair_coeff * * Cu Au Ag\n" \
            "comm_modify cutoff 11"
    pe, stress_lmp, forces_lmp, _ = run_lmp_deck(d, lmp_exe, atoms, ["Cu", "Au", "Ag"], lines)
    e, _, forces, stress = ase_reference(model, atoms)
    assert abs(pe - e) / len(atoms) < 1e-8
    np.testing.assert_allclose(forces_lmp, forces, atol=1e-6)
    np.testing.assert_allclose(stress_lmp, stress, atol=1e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("kokkos", [False, True], ids=["plain", "kokkos"])
def test_null_type_under_hybrid_overlay(workdir, lmp_exe, kokkos):
    """``pair_coeff * * mliap Cu Au NULL``: the model sees only Cu and Au; type 3 atoms get
    no energy and no force from it (another pair style, here ``zero``, covers them)."""
    d, model, atoms = workdir
    if kokkos:
        from lammps_utils import has_kokkos

        if not has_kokkos():
            pytest.skip("this LAMMPS build has no KOKKOS")
    ghostneigh, comm = (0, "") if kokkos else (1, "comm_modify cutoff 11")
    lines = (f"pair_style hybrid/overlay mliap unified {d / 'model-mliap.pt'} {ghostneigh} "
             f"zero 5.0\npair_coeff * * mliap Cu Au NULL\npair_coeff * * zero\n{comm}")
    pe, stress_lmp, forces_lmp, energies_lmp = run_lmp_deck(
        d, lmp_exe, atoms, ["Cu", "Au", "Ag"], lines, kokkos=kokkos, tag=f"null{int(kokkos)}")
    is_ag = np.array(atoms.get_chemical_symbols()) == "Ag"
    assert is_ag.any() and not is_ag.all()
    e, energies, forces, stress = ase_reference(model, atoms[~is_ag])
    assert abs(pe - e) / len(atoms) < 1e-8
    np.testing.assert_allclose(forces_lmp[~is_ag], forces, atol=1e-6)
    np.testing.assert_array_equal(forces_lmp[is_ag], 0.0)
    np.testing.assert_allclose(energies_lmp[~is_ag], energies, atol=1e-8)
    np.testing.assert_array_equal(energies_lmp[is_ag], 0.0)
    # the virial of the Cu/Au sub-structure, over the volume of the whole (same) cell
    np.testing.assert_allclose(stress_lmp, stress, atol=1e-6)


@pytest.mark.mpi
def test_nve_same_on_1_and_2_ranks(workdir):
    d, _, _ = workdir
    one = run_driver(1, d / "model-mliap.pt", d / "alloy.xyz", d / "nve1.json", "--task", "nve")
    two = run_driver(2, d / "model-mliap.pt", d / "alloy.xyz", d / "nve2.json", "--task", "nve")
    assert np.abs(one["positions"] - two["positions"]).max() < 1e-8
    assert np.abs(one["velocities"] - two["velocities"]).max() < 1e-8


@pytest.mark.mpi
def test_box_relax_matches_ase(tmp_path, lmp_exe):
    """LAMMPS minimize + fix box/relax reaches the cell of an ASE relaxation."""
    cfg = facet.facet_tiny(["Cu", "Au"])
    torch.manual_seed(0)
    model = facet.build_model(cfg, torch.float64)  # ReZero init: smooth, well-behaved
    with torch.no_grad():
        model.species_shift.copy_(torch.tensor([-3.5, -3.8]))
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.3)
    facet.save_model(model, tmp_path / "m.pt")
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.symbols[0] = "Au"
    ase.io.write(tmp_path / "cu3au.xyz", atoms)
    res = run_driver(2, tmp_path / "m.pt", tmp_path / "cu3au.xyz", tmp_path / "relax.json",
                     "--task", "relax")
    ref = atoms.copy()
    ref.calc = FacetCalculator(model)
    BFGS(FrechetCellFilter(ref), logfile=None).run(fmax=1e-6, steps=500)
    assert res["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(res["cellpar"], ref.cell.cellpar(), atol=2e-3)


# -- bad input: clear message and a non-zero exit from the `lmp` executable ----------------------

DECK = """units metal
atom_style atomic
{newton}
lattice fcc 3.7
region box block 0 3 0 3 0 3
create_box 2 box
create_atoms 1 box
set type 1 type/fraction 2 0.3 1234
mass * 63.5
pair_style mliap unified {model} {ghostneigh}
pair_coeff * * {elements}
{comm}
run 0
"""


def run_bad_deck(d, lmp_exe, **kw):
    fields = {"newton": "newton on", "model": d / "model-mliap.pt", "elements": "Cu Au",
              "comm": "comm_modify cutoff 11", "ghostneigh": 1}
    fields.update(kw)
    (d / "in.bad").write_text(DECK.format(**fields))
    proc = subprocess.run([str(lmp_exe), "-in", "in.bad", "-log", "none"], cwd=d, env=env(),
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_good_deck_runs(workdir, lmp_exe):
    rc, out = run_bad_deck(workdir[0], lmp_exe)
    assert rc == 0, out[-2000:]


def test_unknown_element_in_pair_coeff(workdir, lmp_exe):
    rc, out = run_bad_deck(workdir[0], lmp_exe, elements="Cu Pt")
    assert rc != 0 and "element Pt (atom type 2) is not in the model" in out


def test_short_comm_cutoff(workdir, lmp_exe):
    rc, out = run_bad_deck(workdir[0], lmp_exe, comm="")
    assert rc != 0
    assert "ghost-atom shell" in out and "comm_modify cutoff 11" in out


def test_ghostneigh_off_is_refused(workdir, lmp_exe):
    d = workdir[0]
    rc, out = run_bad_deck(d, lmp_exe, ghostneigh=0)
    assert rc != 0 and "ghostneigh = 1" in out


def test_missing_model_file(workdir, lmp_exe):
    rc, out = run_bad_deck(workdir[0], lmp_exe, model="/nonexistent/model-mliap.pt")
    assert rc != 0 and "nonexistent" in out


def test_corrupt_model_file(workdir, lmp_exe):
    d = workdir[0]
    data = (d / "model-mliap.pt").read_bytes()
    (d / "corrupt-mliap.pt").write_bytes(data[: len(data) // 3])
    rc, out = run_bad_deck(d, lmp_exe, model=d / "corrupt-mliap.pt")
    assert rc != 0 and ("corrupt" in out.lower() or "error" in out.lower())


def test_newton_off(workdir, lmp_exe):
    rc, out = run_bad_deck(workdir[0], lmp_exe, newton="newton off")
    assert rc != 0 and "newton pair on" in out
