"""No hangs, no false alarms, no crashes (issue 14): each defect with its repro deck, run by the
real `lmp` executable on real MPI ranks, plus the Python-driver and deploy defects.

Every multi-rank run has a timeout: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
import torch
from conftest import lammps_frame, randomized_model, triclinic_alloy
from lammps_utils import (
    JOBS,
    REPO,
    atoms_from_results,
    env,
    has_kokkos,
    mpirun,
    read_deck_results,
    require_lammps,
    run_deck,
    run_driver,
)

import facet
from facet.calculator import FacetCalculator
from facet.cli.deploy import main as deploy_main

pytestmark = [pytest.mark.lammps]

SHIPPED = REPO / "examples" / "models" / "facet-emt-small.pt"
# a hang would stop here, not at the suite's limit
HANG_TIMEOUT = 120


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lmp = require_lammps()
    d = tmp_path_factory.mktemp("robust")
    tiny = randomized_model(facet.facet_tiny(["Cu", "Au"]), seed=14)
    facet.save_model(tiny, d / "tiny.pt")
    assert deploy_main([str(d / "tiny.pt"), "-o", str(d / "tiny-mliap.pt")]) == 0
    assert deploy_main([str(SHIPPED), "-o", str(d / "shipped-mliap.pt")]) == 0
    shipped = facet.load_model(SHIPPED, dtype=torch.float64)
    return {"dir": d, "lmp": lmp, "tiny": tiny, "shipped": shipped}


def ase_results(model, atoms):
    a = atoms.copy()
    a.calc = FacetCalculator(model)
    return a.get_potential_energy(), a.get_potential_energies(), a.get_forces()


def assert_equals_ase(res: dict, model, elements_by_type: list[str]) -> None:
    atoms = atoms_from_results(res, elements_by_type)
    energy, energies, forces = ase_results(model, atoms)
    assert abs(res["energy"] - energy) / len(atoms) < 1e-8
    np.testing.assert_allclose(res["energies"], energies, atol=1e-8)
    np.testing.assert_allclose(res["forces"], forces, atol=1e-6)


def rank_stats(out: str, name: str) -> tuple[float, float, float]:
    """(ave, max, min) of LAMMPS' end-of-run statistics line ``name`` (Nlocal, Nghost)."""
    m = re.search(rf"^{name}:\s+(\S+) ave\s+(\S+) max\s+(\S+) min", out, re.M)
    assert m, f"no {name} statistics in the output"
    return tuple(float(v) for v in m.groups())


# a slab in the lower part of a tall box, non-periodic in z, split in z over 2 ranks
SLAB_LOW = """units metal
atom_style atomic
atom_modify map yes
boundary p p f
newton on
processors 1 1 2
lattice fcc 3.61
region box block 0 2 0 2 0 6
create_box 2 box
region low block 0 2 0 2 0 {top}
create_atoms 1 region low
set type 1 type/fraction 2 0.4 4711
mass * 63.5
pair_style mliap unified {model} {ghostneigh}
pair_coeff * * Cu Au
{comm}
"""


@pytest.mark.mpi
@pytest.mark.parametrize("kokkos", [True, False], ids=["kokkos", "plain"])
def test_rank_without_atoms_or_ghosts(setup, kokkos):
    """Defect 1: on the KOKKOS path a rank that owns no atoms and sees no ghosts read
    ``data.elems`` (ValueError) and the other rank waited in the halo exchange forever."""
    if kokkos and not has_kokkos():
        pytest.skip("this LAMMPS build has no KOKKOS")
    d = setup["dir"]
    deck = SLAB_LOW.format(top=1.0, model=d / "tiny-mliap.pt", ghostneigh=0 if kokkos else 1,
                           comm="" if kokkos else "comm_modify cutoff 11")
    tag = f"empty{int(kokkos)}"
    proc, out = run_deck(d, setup["lmp"], deck, kokkos=kokkos, tag=tag, timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, out[-3000:]
    assert rank_stats(out, "Nlocal")[2] == 0
    if kokkos:  # one-cutoff halo: the upper rank sees nothing at all
        assert rank_stats(out, "Nghost")[2] == 0
    assert_equals_ase(read_deck_results(d, out, tag), setup["tiny"], ["Cu", "Au"])


@pytest.mark.mpi
def test_ghost_check_failing_on_one_rank_stops_every_rank(setup):
    """Defect 2: the ghost-shell check fails on the rank that owns the slab only (the other
    owns no atoms): the job must end with the message, not wait in LAMMPS' error->all."""
    d = setup["dir"]
    deck = SLAB_LOW.format(top=1.9, model=d / "tiny-mliap.pt", ghostneigh=1, comm="")
    t0 = time.monotonic()
    proc, out = run_deck(d, setup["lmp"], deck, tag="onerank", timeout=HANG_TIMEOUT)
    assert proc.returncode != 0
    assert "ghost-atom shell is" in out and "comm_modify cutoff 11" in out, out[-3000:]
    print(f"the job stopped {time.monotonic() - t0:.1f} s after its start")


SLAB_100 = """units metal
atom_style atomic
atom_modify map yes
boundary p p f
newton on
processors 1 1 2
lattice fcc 3.61 orient x 1 0 0 orient y 0 1 0 orient z 0 0 1
region box block 0 3 0 3 -3 6
create_box 2 box
region slab block 0 3 0 3 0 2.9
create_atoms 1 region slab
set type 1 type/fraction 2 0.25 99
mass * 63.5
pair_style mliap unified {model} {ghostneigh}
pair_coeff * * Cu Au
{comm}
"""


@pytest.mark.mpi
@pytest.mark.parametrize("path,cutoff", [("plain", 13), ("plain", 20), ("kokkos", None)])
def test_slab_split_across_vacuum_equals_ase(setup, path, cutoff):
    """Defect 3: a 6-layer fcc(100) slab with vacuum on both sides, split in z over 2 ranks:
    the ghost-shell check took the vacuum for a missing shell although the deck had
    ``comm_modify cutoff 13`` (or 20). Shipped model, both paths, equal to ASE."""
    kokkos = path == "kokkos"
    if kokkos and not has_kokkos():
        pytest.skip("this LAMMPS build has no KOKKOS")
    d = setup["dir"]
    deck = SLAB_100.format(model=d / "shipped-mliap.pt", ghostneigh=0 if kokkos else 1,
                           comm=f"comm_modify cutoff {cutoff}" if cutoff else "")
    tag = f"slab{path}{cutoff}"
    proc, out = run_deck(d, setup["lmp"], deck, kokkos=kokkos, tag=tag, timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, out[-3000:]
    assert rank_stats(out, "Nlocal")[2] > 0  # the split runs through the slab
    res = read_deck_results(d, out, tag)
    assert len(np.unique(np.round(res["positions"][:, 2], 3))) == 6
    assert_equals_ase(res, setup["shipped"], ["Cu", "Au"])


@pytest.mark.mpi
def test_thin_shell_still_detected_on_a_slab(setup):
    """The relaxed check still stops a slab run whose shell is too thin where the material
    goes on (x and y, periodic)."""
    d = setup["dir"]
    deck = SLAB_100.format(model=d / "shipped-mliap.pt", ghostneigh=1, comm="comm_modify "
                           "cutoff 8")
    proc, out = run_deck(d, setup["lmp"], deck, tag="slabthin", timeout=HANG_TIMEOUT)
    assert proc.returncode != 0 and "ghost-atom shell is" in out, out[-3000:]


@pytest.mark.mpi
def test_ghost_check_can_be_switched_off(setup):
    """``FACET_GHOST_CHECK=0`` skips the check (with a warning): the deck of the thin-shell
    test then runs."""
    d = setup["dir"]
    deck = SLAB_100.format(model=d / "shipped-mliap.pt", ghostneigh=1, comm="comm_modify "
                           "cutoff 8")
    proc, out = run_deck(d, setup["lmp"], deck, tag="slaboff", timeout=HANG_TIMEOUT,
                         extra_env={"FACET_GHOST_CHECK": "0"})
    assert proc.returncode == 0, out[-3000:]
    assert "ghost-shell check is switched off" in out


# -- bad pair_coeff / pair_style input: an ERROR line, never a crash -------------------------

BOX3 = """units metal
atom_style atomic
newton on
lattice fcc 3.7
region box block 0 2 0 2 0 2
create_box {ntypes} box
create_atoms 1 box
mass * 63.5
pair_style mliap unified {model} {ghostneigh}
pair_coeff * * {elements}
comm_modify cutoff 11
"""


@pytest.mark.parametrize("kokkos", [False, True], ids=["plain", "kokkos"])
@pytest.mark.parametrize("ntypes,elements,message", [
    (3, "Cu Au", "3 atom types, 2 names given"),
    (2, "Cu Au Cu", "2 atom types, 3 names given"),
    (2, "Cu Xx", "element Xx (atom type 2) is not in the model; its elements are: Cu Au"),
])
def test_pair_coeff_errors_are_clear(setup, kokkos, ntypes, elements, message):
    """Defect 4 and 5: fewer names than types segfaulted in PairMLIAP::coeff; an unknown
    element gave LAMMPS' generic "Incorrect args". Both paths must say what is wrong."""
    if kokkos and not has_kokkos():
        pytest.skip("this LAMMPS build has no KOKKOS")
    d = setup["dir"]
    deck = BOX3.format(ntypes=ntypes, elements=elements, model=d / "tiny-mliap.pt",
                       ghostneigh=0 if kokkos else 1)
    proc, out = run_deck(d, setup["lmp"], deck, nproc=1, kokkos=kokkos, tag="coeff",
                         results=False, timeout=HANG_TIMEOUT)
    assert proc.returncode != 0
    assert "ERROR" in out and message in out, out[-3000:]


@pytest.mark.parametrize("kokkos", [False, True], ids=["plain", "kokkos"])
def test_checkpoint_given_to_pair_style_says_deploy_it(setup, kokkos):
    """Defect 5: a checkpoint (not a deployed file) in ``pair_style mliap unified`` failed with
    "AttributeError: 'dict' object has no attribute 'interface'"."""
    if kokkos and not has_kokkos():
        pytest.skip("this LAMMPS build has no KOKKOS")
    d = setup["dir"]
    deck = BOX3.format(ntypes=2, elements="Cu Au", model=d / "tiny.pt",
                       ghostneigh=0 if kokkos else 1)
    proc, out = run_deck(d, setup["lmp"], deck, nproc=1, kokkos=kokkos, tag="ckpt",
                         results=False, timeout=HANG_TIMEOUT)
    assert proc.returncode != 0
    assert "not an ML-IAP unified model object" in out and "facet-deploy" in out, out[-3000:]


# -- any error on any subset of ranks stops the job (Python driver) --------------------------

@pytest.fixture(scope="module")
def fail_structure(setup):
    path = setup["dir"] / "fail.xyz"
    ase.io.write(path, lammps_frame(triclinic_alloy(seed=2)))
    return path


def run_fail_job(setup, structure, *args):
    return mpirun(2, [sys.executable, str(JOBS / "fail_job.py"), str(setup["dir"] / "tiny.pt"),
                      str(structure), *args], cwd=setup["dir"], timeout=HANG_TIMEOUT)


@pytest.mark.mpi
@pytest.mark.parametrize("kokkos", [False, True], ids=["plain", "kokkos"])
def test_problem_on_one_rank_raises_on_every_rank(setup, fail_structure, kokkos):
    """With LAMMPS' communicator known (FacetLammps), a problem found on rank 1 only is raised
    on both ranks: Python callers catch the same error everywhere."""
    if kokkos and not has_kokkos():
        pytest.skip("this LAMMPS build has no KOKKOS")
    proc = run_fail_job(setup, fail_structure, "config", *(["--kokkos"] if kokkos else []))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rank in (0, 1):
        assert f"CAUGHT rank {rank}" in out, out[-3000:]
    assert "injected configuration problem on rank 1 (found on rank 1)" in out


@pytest.mark.mpi
@pytest.mark.parametrize("args", [["config", "--no-comm"], ["evaluate"],
                                  ["evaluate", "--kokkos"]],
                         ids=["config-no-comm", "evaluate-plain", "evaluate-kokkos"])
def test_failure_on_one_rank_aborts_the_job(setup, fail_structure, args):
    """Without a known communicator (the `lmp` executable), or inside the evaluation, a
    failure on rank 1 only aborts the whole job with the message: no rank waits forever."""
    if "--kokkos" in args and not has_kokkos():
        pytest.skip("this LAMMPS build has no KOKKOS")
    proc = run_fail_job(setup, fail_structure, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "ERROR on proc 1" in out and "injected" in out, out[-3000:]
    assert "FINISHED" not in out


# -- the Python driver --------------------------------------------------------------------

@pytest.mark.mpi
def test_relax_box_relaxes_shear_like_ase(setup, tmp_path):
    """Defect 6: ``relax(box=True)`` used ``aniso``: shear stress stayed. It must relax all six
    cell components and reach ASE's full-cell minimum (shipped model, sheared alloy)."""
    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 1, 1))
    atoms.symbols[[0, 3, 6]] = "Au"
    atoms.symbols[5] = "Pd"
    atoms.set_cell(atoms.cell.array @ np.array([[1, 0, 0], [0.04, 1, 0], [0.03, -0.02, 1]]),
                   scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    atoms = lammps_frame(atoms)
    ase.io.write(tmp_path / "sheared.xyz", atoms)
    res = run_driver(1, SHIPPED, tmp_path / "sheared.xyz", tmp_path / "relax.json",
                     "--task", "relax")
    assert np.abs(res["stress"]).max() < 2e-5, res["stress"]  # eV/Å^3, all six
    ref = atoms.copy()
    ref.calc = FacetCalculator(setup["shipped"])
    BFGS(FrechetCellFilter(ref), logfile=None).run(fmax=1e-5, steps=1000)
    assert res["energy"] == pytest.approx(ref.get_potential_energy(), abs=2e-5 * len(atoms))


@pytest.mark.mpi
def test_relax_box_on_a_slab_relaxes_x_and_y(setup, tmp_path):
    """Defect 6: on a slab (non-periodic z) ``box=True`` raised a LAMMPS error; it must relax
    the periodic directions only."""
    from ase.build import fcc100

    slab = fcc100("Cu", size=(2, 2, 4), a=3.7, vacuum=6.0)
    slab.symbols[::5] = "Au"
    ase.io.write(tmp_path / "slab.xyz", slab)
    res = run_driver(1, setup["dir"] / "shipped-mliap.pt", tmp_path / "slab.xyz",
                     tmp_path / "slab.json", "--task", "relax")
    assert abs(res["cellpar"][0] - slab.cell.cellpar()[0]) > 1e-3  # a relaxed
    assert np.abs(res["stress"][[0, 1, 5]]).max() < 2e-5, res["stress"]  # xx, yy, xy


@pytest.mark.mpi
def test_stress_uses_lammps_conversion(setup, tmp_path):
    """Defect 8: stress from LAMMPS' pressure is converted with LAMMPS' own bar per eV/Å^3
    (nktv2p = 1.6021765e6 in metal units), so a strongly stressed cell agrees with ASE to
    rounding (on LAMMPS' own positions: the data file rounds them); the CODATA factor would be
    off by 8e-8 relative."""
    from ase import Atoms
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.2, cubic=True).repeat((2, 2, 2))  # compressed: large stress
    atoms.symbols[::3] = "Au"
    atoms.rattle(0.03, seed=1)
    ase.io.write(tmp_path / "dense.xyz", atoms)
    res = run_driver(1, setup["dir"] / "tiny-mliap.pt", tmp_path / "dense.xyz",
                     tmp_path / "dense.json")
    here = Atoms(atoms.get_chemical_symbols(), positions=res["lammps_positions"],
                 cell=res["lammps_cell"], pbc=True)
    here.calc = FacetCalculator(setup["tiny"])
    stress = here.get_stress()
    assert np.abs(stress).max() > 0.01
    np.testing.assert_allclose(res["stress"], stress, rtol=0, atol=1e-9 * np.abs(stress).max())


def test_load_mliap_reads_checkpoints_without_running_code(setup, monkeypatch):
    """Defect 8: checkpoints promise never to run code; the driver loaded them with
    ``torch.load(weights_only=False)``. Only deployed ML-IAP files (pickles by LAMMPS'
    design) are loaded that way."""
    from facet.lammps.driver import load_mliap

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append((str(args[0]), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    d = setup["dir"]
    load_mliap(d / "tiny.pt")
    assert calls and all(w is True for _, w in calls), calls
    calls.clear()
    assert load_mliap(d / "tiny-mliap.pt").element_types == ["Cu", "Au"]
    assert [c for c in calls if c[1] is not True] == [(str(d / "tiny-mliap.pt"), False)]


def test_mliap_object_does_not_depend_on_base_class_arguments(setup, monkeypatch):
    """Defect 8: ``MLIAPUnified.__init__``'s arguments differ between LAMMPS versions; the
    object sets its attributes after a call without arguments."""
    from facet.lammps import mliap

    def no_argument_init(self):
        self.interface = None

    monkeypatch.setattr(mliap.MLIAPUnified, "__init__", no_argument_init)
    obj = mliap.FacetMLIAP.from_checkpoint(setup["dir"] / "tiny.pt")
    assert obj.element_types == ["Cu", "Au"] and obj.rcutfac == 2.0
    assert obj.ndescriptors == 1 and obj.nparams == 1


def test_lammps_rank_imports_stay_light(setup):
    """Unpickling the deployed object (what every LAMMPS rank does) imports neither ASE, nor
    vesin, nor matplotlib."""
    code = (
        "import sys, torch\n"
        f"obj = torch.load({str(setup['dir'] / 'tiny-mliap.pt')!r}, weights_only=False)\n"
        "import facet\n"
        "heavy = [m for m in ('ase', 'vesin', 'matplotlib', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(type(obj).__module__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "facet.lammps.mliap"


# -- facet-deploy ----------------------------------------------------------------------------

@pytest.mark.mpi
def test_deploy_to_a_path_with_spaces_prints_a_deck_that_runs(setup, tmp_path, capsys):
    """Defect 7: the printed deck lines must survive paths with spaces (quoted)."""
    target = tmp_path / "my models" / "tiny #1-mliap.pt"
    assert deploy_main([str(setup["dir"] / "tiny.pt"), "-o", str(target)]) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = [s.strip() for s in printed if s.strip().startswith(("pair_style", "pair_coeff",
                                                                  "comm_modify"))][:3]
    assert lines[0] == f'pair_style mliap unified "{target}" 1'
    deck = BOX3.format(ntypes=2, elements="Cu Au", model="X", ghostneigh=1)
    deck = deck.replace("pair_style mliap unified X 1\npair_coeff * * Cu Au\n"
                        "comm_modify cutoff 11\n", "\n".join(lines) + "\n")
    proc, out = run_deck(tmp_path, setup["lmp"], deck, tag="spaces", timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, out[-3000:]


def test_check_without_lammps_evaluates_the_deployed_bytes(setup, tmp_path, monkeypatch):
    """Defect 8: ``facet-deploy --check`` without LAMMPS' Python module re-scripted the
    checkpoint instead of checking the deployed file: a deployed file from another model must
    be a mismatch."""
    from facet.lammps.check import check_deployed

    other = randomized_model(facet.facet_tiny(["Cu", "Au"]), seed=15)
    facet.save_model(other, tmp_path / "other.pt")
    assert deploy_main([str(tmp_path / "other.pt"), "-o", str(tmp_path / "other-mliap.pt")]) == 0
    monkeypatch.setitem(sys.modules, "lammps", None)  # `import lammps` now fails
    d = setup["dir"]
    assert check_deployed(d / "tiny.pt", d / "tiny-mliap.pt")
    assert not check_deployed(d / "tiny.pt", tmp_path / "other-mliap.pt")
