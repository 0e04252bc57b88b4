"""The native LAMMPS plugin (`plugin load facetplugin.so`, `pair_style facet FILE`).

Real `lmp` executable, real MPI ranks, files written by `facet-deploy --format plugin`.
Tolerances (float64) against the ASE calculator in LAMMPS' frame: energy 1e-8 eV/atom, per-atom
energies 1e-8 eV, forces 1e-6 eV/Å, stress 1e-6 eV/Å^3.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from conftest import lammps_frame, randomized_model, triclinic_alloy
from lammps_utils import REPO, env, require_lammps, run_driver
from plugin_utils import (
    DUMP,
    HEADER,
    ase_reference,
    assert_ref,
    deck_for,
    last_thermo_row,
    pair_lines,
    require_plugin,
    results,
    run_lmp,
    thermo_rows,
    write_data,
)

import facet
from facet.calculator import FacetCalculator
from facet.cli.deploy import main as deploy_main
from facet.jitcompat import quiet_torchscript
from facet.lammps.plugin import METADATA_FILE, plugin_library, read_plugin_metadata

pytestmark = [pytest.mark.lammps, pytest.mark.plugin]

SHIPPED = REPO / "examples" / "models" / "facet-emt-small.pt"


@pytest.fixture(scope="module")
def lib():
    require_lammps()
    return require_plugin()


@pytest.fixture(scope="module")
def lmp_exe():
    return require_lammps()


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory, lib):
    """A random 2-layer tiny model (Cu, Au, Ag), its plugin file, a triclinic 3-element cell and
    its ASE reference."""
    d = tmp_path_factory.mktemp("plugin")
    model = randomized_model(facet.facet_tiny(["Cu", "Au", "Ag"]), seed=3)
    facet.save_model(model, d / "model.pt")
    assert deploy_main([str(d / "model.pt"), "--format", "plugin", "-o",
                        str(d / "model-plugin.pt")]) == 0
    atoms = lammps_frame(triclinic_alloy(seed=5, repeat=(3, 3, 3)))
    atoms.symbols[::7] = "Ag"
    data = write_data(d, atoms, ["Cu", "Au", "Ag"], "alloy")
    return {"d": d, "model": model, "file": d / "model-plugin.pt", "atoms": atoms,
            "data": data, "ref": ase_reference(model, atoms)}


# -- build, registration, facet-deploy ----------------------------------------------------------


def test_style_registered(lib, lmp_exe, tmp_path):
    """`plugin load` only logs a failed dlopen: check that the style is really there."""
    deck = f"plugin load {lib}\nplugin list\n"
    rc, out = run_lmp(tmp_path, lmp_exe, deck, tag="list")
    assert "pair style plugin facet" in out
    # a wrong path is only a log line; then pair_style facet is unknown
    deck = "plugin load /nonexistent/facetplugin.so\nunits metal\npair_style facet x.pt\n"
    rc, out = run_lmp(tmp_path, lmp_exe, deck, tag="nolib", check=False)
    assert rc != 0 and "Unrecognized pair style" in out


def test_build_script_is_cached(lib):
    """./setup.sh runs deploy/build_plugin.sh every time: with nothing changed it is a cache hit
    (seconds) and still checks that the style registers."""
    import time

    t0 = time.time()
    proc = subprocess.run(["bash", str(REPO / "deploy" / "build_plugin.sh")], env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "cached build found" in proc.stdout and "smoke test passed" in proc.stdout
    assert time.time() - t0 < 60
    assert plugin_library() == lib


def test_deploy_plugin_prints_deck_lines(tiny_model, tmp_path, capsys, lib):
    ckpt = facet.save_model(tiny_model, tmp_path / "m.pt")
    assert deploy_main([str(ckpt), "--format", "plugin", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    written = tmp_path / "m-plugin.pt"
    assert f"  plugin load {lib}\n" in out
    assert f"  pair_style facet {written}\n" in out
    assert "  pair_coeff * * Cu Au\n" in out
    extra = {METADATA_FILE: ""}
    with quiet_torchscript():
        module = torch.jit.load(str(written), _extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert meta["format"] == "facet-lammps-plugin" and meta["format_version"] == 1
    assert meta["elements"] == ["Cu", "Au"] and meta["dtype"] == "float32"
    assert meta["num_layers"] == tiny_model.num_interactions
    assert meta["feature_dims"] == tiny_model.feature_dims
    assert meta["r_max"] == tiny_model.r_max
    for name in ("embed", "edge_features", "layer", "layer_forward_chunked",
                 "layer_backward_chunked", "readout"):
        assert hasattr(module, name)
    # -o names the output
    assert deploy_main([str(ckpt), "--format", "plugin", "-o", str(tmp_path / "x.pt")]) == 0
    assert f"pair_style facet {tmp_path / 'x.pt'}" in capsys.readouterr().out


# -- parity --------------------------------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize("nproc", [1, 2, 3, 4])
def test_matches_ase(work, lmp_exe, nproc):
    """Triclinic 3-element cell; also the per-atom virials (stress/atom, and the diagonal of
    centroid/stress/atom) sum to the global virial."""
    d = work["d"]
    tag = f"par{nproc}"
    deck = deck_for(plugin_library(), work["data"], pair_lines(work["file"], ["Cu", "Au", "Ag"]),
                    dump=tag)
    run_lmp(d, lmp_exe, deck, nproc, tag=tag)
    res = results(d, work["atoms"], tag)
    assert_ref(res, work["ref"])
    np.testing.assert_allclose(res["virial_atoms"], res["virial"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(res["virial_centroid_diag"], res["virial"][:3], rtol=1e-10,
                               atol=1e-10)


@pytest.mark.mpi
@pytest.mark.parametrize("nproc", [1, 2])
def test_recomputing_evaluation_matches_ase(work, lmp_exe, nproc):
    """The chunked, recomputing evaluation forced at every call (pair_style keywords)."""
    d = work["d"]
    tag = f"rec{nproc}"
    pair = pair_lines(work["file"], ["Cu", "Au", "Ag"], "chunk_edges 150 single_pass_edges 0")
    run_lmp(d, lmp_exe, deck_for(plugin_library(), work["data"], pair, dump=tag), nproc, tag=tag)
    assert "recomputing evaluation in chunks of 150 pairs above 0 pairs" in \
        (d / f"log.{tag}").read_text()
    res = results(d, work["atoms"], tag)
    assert_ref(res, work["ref"])
    np.testing.assert_allclose(res["virial_atoms"], res["virial"], rtol=1e-10, atol=1e-10)


@pytest.mark.mpi
@pytest.mark.parametrize("nproc", [1, 2])
def test_folded_images_equal_exchanged_ghosts(work, lmp_exe, nproc):
    """Ghost atoms read as the local atoms they are periodic images of (the default) against
    every ghost row filled by the exchanges (`fold_images no`): the same numbers, both equal to
    ASE. The cell is small enough that an atom meets several images of itself and of others.
    On one rank the default makes no exchanges at all (its log and timer say so); on two ranks
    the ghosts from the other rank are still exchanged."""
    d = work["d"]
    out = {}
    for fold in ("yes", "no"):
        tag = f"fold{fold}{nproc}"
        pair = pair_lines(work["file"], ["Cu", "Au", "Ag"],
                          "" if fold == "yes" else "fold_images no")
        run_lmp(d, lmp_exe, deck_for(plugin_library(), work["data"], pair, dump=tag), nproc,
                tag=tag)
        log = (d / f"log.{tag}").read_text()
        res = out[fold] = results(d, work["atoms"], tag)
        assert_ref(res, work["ref"])
        np.testing.assert_allclose(res["virial_atoms"], res["virial"], rtol=1e-10, atol=1e-10)
        packed = float(re.findall(r"([\d.]+) / [\d.]+ values packed", log)[-1])
        if fold == "yes" and nproc == 1:
            assert "one rank: ghost atoms read as the local atoms they are periodic images of, " \
                   "no exchanges" in log
            assert packed == 0
        else:
            assert "per-layer halo exchange" in log and packed > 0
            assert ("ghost images of a rank's own atoms read as those atoms" in log) == \
                (fold == "yes")
    for key in ("energy", "energies", "forces", "stress", "virial", "virial_atoms"):
        np.testing.assert_allclose(out["yes"][key], out["no"][key], rtol=1e-11, atol=1e-11)


def test_without_atom_ids_every_ghost_is_exchanged(work, lmp_exe):
    """`atom_modify id no`: no atom IDs to find a ghost's local image by, so every ghost row is
    exchanged (and the log does not claim otherwise); the same numbers as with IDs."""
    d = work["d"]
    rows = {}
    for ids in ("yes", "no"):
        # the deck of the refused-input tests (BAD below), atom IDs on or off, rattled
        deck = BAD.format(lib=plugin_library(), newton=f"newton on\natom_modify id {ids}",
                          model=work["file"], elements="Cu Au", extra="").replace(
            "run 0", "displace_atoms all random 0.05 0.05 0.05 7\n"
            "thermo_style custom step pe pxx pyy pzz pyz pxz pxy\n"
            "thermo_modify format float %.15g\nrun 0")
        run_lmp(d, lmp_exe, deck, tag=f"ids{ids}")
        log = (d / f"log.ids{ids}").read_text()
        rows[ids] = last_thermo_row(d / f"log.ids{ids}")
        if ids == "yes":
            assert "no exchanges" in log
        else:
            assert "per-layer halo exchange" in log and "ghost images" not in log
    np.testing.assert_allclose(rows["yes"], rows["no"], rtol=1e-11, atol=1e-8)


@pytest.mark.mpi
def test_plugin_equals_mliap_plain_and_kokkos_paths(work, lmp_exe):
    """The same structure through the plugin, ML-IAP's plain path and its KOKKOS path (2 ranks)."""
    d = work["d"]
    from lammps_utils import has_kokkos

    assert deploy_main([str(d / "model.pt"), "-o", str(d / "model-mliap.pt")]) == 0
    # the same input everywhere (extxyz rounds positions to 1e-8 Å)
    ase.io.write(d / "alloy.xyz", work["atoms"])
    atoms = ase.io.read(d / "alloy.xyz")
    data = write_data(d, atoms, ["Cu", "Au", "Ag"], "eq")
    run_lmp(d, lmp_exe, deck_for(plugin_library(), data,
                                 pair_lines(work["file"], ["Cu", "Au", "Ag"]), dump="eq"),
            2, tag="eq")
    plugin = results(d, atoms, "eq")
    paths = {"plain": run_driver(2, d / "model-mliap.pt", d / "alloy.xyz", d / "plain.json")}
    if has_kokkos():
        paths["kokkos"] = run_driver(2, d / "model-mliap.pt", d / "alloy.xyz", d / "kk.json",
                                     "--kokkos")
    for name, other in paths.items():
        # (the driver's total energy comes from LAMMPS' thermo output, rounded to 9 digits)
        assert abs(plugin["energy"] - other["energy"]) < 1e-7, name
        assert abs(plugin["energies"].sum() - other["energies"].sum()) < 1e-9, name
        np.testing.assert_allclose(plugin["energies"], other["energies"], atol=1e-10)
        np.testing.assert_allclose(plugin["forces"], other["forces"], atol=1e-9)
        np.testing.assert_allclose(plugin["stress"], other["stress"], atol=1e-10)
    assert "kokkos" in paths or not os.environ.get("CI")


@pytest.mark.mpi
def test_float32_model(work, lmp_exe):
    d = work["d"]
    assert deploy_main([str(d / "model.pt"), "--format", "plugin", "--dtype", "float32", "-o",
                        str(d / "f32-plugin.pt")]) == 0
    run_lmp(d, lmp_exe, deck_for(plugin_library(), work["data"],
                                 pair_lines(d / "f32-plugin.pt", ["Cu", "Au", "Ag"]),
                                 dump="f32"), 2, tag="f32")
    res = results(d, work["atoms"], "f32")
    ref = ase_reference(facet.load_model(d / "model.pt", dtype=torch.float32), work["atoms"],
                        "float32")
    assert "float32 on cpu" in (d / "log.f32").read_text()
    assert abs(res["energy"] - ref["energy"]) / len(work["atoms"]) < 1e-5
    np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-4)
    np.testing.assert_allclose(res["stress"], ref["stress"], atol=1e-5)


@pytest.mark.mpi
def test_shipped_model_element_order_differs(lmp_exe, lib, tmp_path):
    """The shipped 7-element model with LAMMPS types Au, Ni, Cu (not the model's order)."""
    assert deploy_main([str(SHIPPED), "--format", "plugin", "-o",
                        str(tmp_path / "emt-plugin.pt")]) == 0
    rng = np.random.default_rng(7)
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True).repeat((3, 3, 3))
    atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
    atoms.symbols[rng.random(len(atoms)) < 0.3] = "Au"
    atoms.symbols[rng.random(len(atoms)) < 0.15] = "Ni"
    atoms = lammps_frame(atoms)
    species = ["Au", "Ni", "Cu"]
    data = write_data(tmp_path, atoms, species, "emt")
    run_lmp(tmp_path, lmp_exe, deck_for(lib, data, pair_lines(tmp_path / "emt-plugin.pt",
                                                              species), dump="emt"),
            2, tag="emt")
    assert "1->Au 2->Ni 3->Cu" in (tmp_path / "log.emt").read_text()
    res = results(tmp_path, atoms, "emt")
    assert_ref(res, ase_reference(facet.load_model(SHIPPED), atoms))


# -- dynamics ------------------------------------------------------------------------------------


@pytest.mark.mpi
def test_nve_same_on_1_and_2_ranks(work, lmp_exe):
    """20 NVE steps re-neighbouring every 5 (the exchange's send lists change and are reused in
    between): the same trajectory on 1 and 2 ranks, and the last step's forces equal ASE's on
    the last positions."""
    d = work["d"]
    body = ("velocity all create 600.0 4928459 mom yes rot no dist gaussian loop geom\n"
            "neigh_modify every 5 delay 0 check no\n"
            "fix nve all nve\ntimestep 0.002\nundump {tag}\n"
            "dump fin all custom 20 {tag}.final id x y z vx vy vz fx fy fz\n"
            "dump_modify fin sort id format float %.15g\nrun 20\n")
    out = []
    for p in (1, 2):
        tag = f"nve{p}"
        run_lmp(d, lmp_exe, deck_for(plugin_library(), work["data"],
                                     pair_lines(work["file"], ["Cu", "Au", "Ag"]), dump=tag,
                                     body=body.format(tag=tag)), p, tag=tag)
        log = (d / f"log.{tag}").read_text()
        assert re.search(r"Neighbor list builds = 4\b", log), "expected 4 rebuilds in 20 steps"
        lines = (d / f"{tag}.final").read_text().splitlines()
        k = max(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
        out.append(np.array([line.split() for line in lines[k + 1:]], dtype=float))
    assert len(out[0]) == len(work["atoms"])
    assert np.abs(out[0][:, 1:] - out[1][:, 1:]).max() < 1e-8
    moved = work["atoms"].copy()
    moved.positions = out[1][:, 1:4]  # LAMMPS' frame = the atoms' frame (lammps_frame)
    assert np.abs(moved.positions - work["atoms"].positions).max() > 0.01
    ref = ase_reference(work["model"], moved)
    np.testing.assert_allclose(out[1][:, 7:10], ref["forces"], atol=1e-6)


@pytest.mark.mpi
def test_box_relax_matches_ase(lmp_exe, lib, tmp_path):
    """minimize + fix box/relax reaches the energy and cell of an ASE relaxation."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    cfg = facet.facet_tiny(["Cu", "Au"])
    torch.manual_seed(0)
    model = facet.build_model(cfg, torch.float64)  # ReZero init: smooth, well-behaved
    with torch.no_grad():
        model.species_shift.copy_(torch.tensor([-3.5, -3.8]))
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.3)
    facet.save_model(model, tmp_path / "m.pt")
    assert deploy_main([str(tmp_path / "m.pt"), "--format", "plugin", "-o",
                        str(tmp_path / "m-plugin.pt")]) == 0
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.symbols[0] = "Au"
    data = write_data(tmp_path, atoms, ["Cu", "Au"], "cu3au")
    body = ("fix relax all box/relax aniso 0.0 vmax 0.001\nmin_style cg\n"
            "minimize 0.0 1e-5 2000 20000\nprint \"CELL $(lx) $(ly) $(lz)\"\n")
    _, out = run_lmp(tmp_path, lmp_exe, deck_for(lib, data, pair_lines(tmp_path / "m-plugin.pt",
                                                                      ["Cu", "Au"]), body=body),
                     2, tag="relax")
    cell = [float(v) for v in re.findall(r"^CELL (\S+) (\S+) (\S+)", out, re.M)[-1]]
    energy = last_thermo_row(tmp_path / "log.relax")[1]
    ref = atoms.copy()
    ref.calc = FacetCalculator(model)
    BFGS(FrechetCellFilter(ref), logfile=None).run(fmax=1e-6, steps=500)
    assert energy == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(cell, ref.cell.cellpar()[:3], atol=2e-3)


# -- what must just work ---------------------------------------------------------------------------


@pytest.mark.mpi
def test_id_gaps_and_atom_count_change_between_runs(work, lmp_exe):
    """run 0, delete_atoms (IDs keep their gaps), run 0 again: both equal ASE."""
    d = work["d"]
    gone = [3, 10, 50, 77, 78]  # atom IDs (1-based)
    body = (f"run 0\ngroup gone id {' '.join(map(str, gone))}\n"
            "delete_atoms group gone compress no\nundump gaps\n" + DUMP.format(name="gaps2")
            + "run 0\n")
    run_lmp(d, lmp_exe, deck_for(plugin_library(), work["data"],
                                 pair_lines(work["file"], ["Cu", "Au", "Ag"]), dump="gaps",
                                 body=body), 2, tag="gaps")
    rows = thermo_rows(d / "log.gaps")
    assert len(rows) == 2
    assert_ref(results(d, work["atoms"], "gaps", row=rows[0]), work["ref"])
    keep = [i for i in range(len(work["atoms"])) if i + 1 not in gone]
    atoms = work["atoms"][keep]
    res = results(d, atoms, "gaps", dump="gaps2", row=rows[1])
    np.testing.assert_array_equal(res["ids"], np.array(keep) + 1)
    assert_ref(res, ase_reference(work["model"], atoms))


def slab(n=(3, 3, 2), seed=1) -> Atoms:
    """A rattled two-element fcc (111)-like slab, periodic in x and y."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(n)
    atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
    atoms.symbols[rng.random(len(atoms)) < 0.4] = "Au"
    return atoms


@pytest.mark.mpi
def test_rank_without_atoms_or_ghosts(work, lmp_exe):
    """`boundary p p f`, `processors 1 1 2`, a slab only in the lower part of the box: the upper
    rank owns no atoms and sees no ghosts, and still runs every exchange."""
    d = work["d"]
    atoms = slab()
    atoms.positions[:, 2] += 1.0
    atoms.set_cell([atoms.cell[0, 0], atoms.cell[1, 1], 40.0])
    atoms.pbc = [True, True, False]
    data = write_data(d, atoms, ["Cu", "Au", "Ag"], "lowslab")
    run_lmp(d, lmp_exe, deck_for(plugin_library(), data,
                                 pair_lines(work["file"], ["Cu", "Au", "Ag"]), dump="lowslab",
                                 boundary="p p f", before_read="processors 1 1 2"),
            2, tag="lowslab")
    log = (d / "log.lowslab").read_text()
    assert re.search(r"Nlocal:.*\s0 min", log) and re.search(r"Nghost:.*\s0 min", log)
    res = results(d, atoms, "lowslab")
    assert_ref(res, ase_reference(work["model"], atoms))


@pytest.mark.mpi
def test_slab_vacuum_thin_subdomains_and_tiled_comm(work, lmp_exe):
    """A slab in a periodic box with vacuum, cut by processor planes (processors 1 1 3: one rank
    in the vacuum), with sub-domains thinner than the ghost cutoff in x (processors 3 1 1:
    several swaps per direction), and with `comm_style tiled` + `balance rcb`."""
    d = work["d"]
    atoms = slab()
    atoms.positions[:, 2] += 10.0
    atoms.set_cell([atoms.cell[0, 0], atoms.cell[1, 1], 40.0])
    data = write_data(d, atoms, ["Cu", "Au", "Ag"], "vacslab")
    ref = ase_reference(work["model"], atoms)
    for before, tag in (("processors 1 1 3", "vac113"), ("processors 3 1 1", "vac311"),
                        ("comm_style tiled", "tiled")):
        pair = pair_lines(work["file"], ["Cu", "Au", "Ag"])
        if tag == "tiled":  # recursive bisection: sub-domains of uneven shape
            pair += "\nbalance 1.0 rcb"
        run_lmp(d, lmp_exe, deck_for(plugin_library(), data, pair, dump=tag,
                                     before_read=before), 3, tag=tag)
        assert_ref(results(d, atoms, tag), ref)
    # x is 11.1 Å over 3 ranks: 3.7 Å sub-domains against a 6 Å ghost cutoff (r_max 4 + skin 2)
    assert atoms.cell[0, 0] / 3 < work["model"].r_max + 2.0


@pytest.mark.mpi
def test_null_type_under_hybrid_overlay(work, lmp_exe):
    """`pair_coeff * * facet Cu Au NULL`: Ag atoms get nothing from the model."""
    d, atoms = work["d"], work["atoms"]
    pair = (f"pair_style hybrid/overlay facet {work['file']} zero 5.0\n"
            "pair_coeff * * facet Cu Au NULL\npair_coeff * * zero")
    run_lmp(d, lmp_exe, deck_for(plugin_library(), work["data"], pair, dump="null"), 2,
            tag="null")
    res = results(d, atoms, "null")
    is_ag = np.array(atoms.get_chemical_symbols()) == "Ag"
    ref = ase_reference(work["model"], atoms[~is_ag])
    assert abs(res["energy"] - ref["energy"]) / len(atoms) < 1e-8
    np.testing.assert_allclose(res["forces"][~is_ag], ref["forces"], atol=1e-6)
    np.testing.assert_array_equal(res["forces"][is_ag], 0.0)
    np.testing.assert_allclose(res["energies"][~is_ag], ref["energies"], atol=1e-8)
    np.testing.assert_array_equal(res["energies"][is_ag], 0.0)
    np.testing.assert_allclose(res["stress"], ref["stress"], atol=1e-6)
    np.testing.assert_allclose(res["virial_atoms"], res["virial"], rtol=1e-10, atol=1e-10)


@pytest.mark.mpi
def test_write_restart_read_restart(work, lmp_exe):
    """write_restart, then read_restart in a new run: the pair style is not stored in the
    restart (restartinfo 0), the deck repeats pair_style/pair_coeff; same numbers."""
    d = work["d"]
    body = "run 0\nwrite_restart plugin.restart\n"
    run_lmp(d, lmp_exe, deck_for(plugin_library(), work["data"],
                                 pair_lines(work["file"], ["Cu", "Au", "Ag"]), dump="wr",
                                 body=body), 2, tag="wr")
    deck = (f"plugin load {plugin_library()}\nread_restart plugin.restart\n"
            + pair_lines(work["file"], ["Cu", "Au", "Ag"]) + "\n"
            + HEADER.split("{pair}\n")[1] + DUMP.format(name="rr") + "run 0\n")
    run_lmp(d, lmp_exe, deck, 2, tag="rr")
    first = results(d, work["atoms"], "wr", dump="wr")
    again = results(d, work["atoms"], "rr")
    assert again["energy"] == pytest.approx(first["energy"], abs=1e-9)
    np.testing.assert_allclose(again["forces"], first["forces"], atol=1e-10)
    assert_ref(again, work["ref"])


# -- bad input: a LAMMPS error that says what to do -----------------------------------------------

BAD = """plugin load {lib}
units metal
atom_style atomic
{newton}
lattice fcc 3.7
region box block 0 3 0 3 0 3
create_box 2 box
create_atoms 1 box
set type 1 type/fraction 2 0.3 1234
mass * 63.5
pair_style facet {model} {extra}
pair_coeff * * {elements}
run 0
"""


def run_bad(work, lmp_exe, extra_env: dict[str, str] | None = None, **kw) -> tuple[int, str]:
    fields = {"lib": plugin_library(), "newton": "newton on", "model": work["file"],
              "elements": "Cu Au", "extra": ""}
    fields.update(kw)
    d = work["d"]
    (d / "in.bad").write_text(BAD.format(**fields))
    proc = subprocess.run([str(lmp_exe), "-in", "in.bad", "-log", "none"], cwd=d,
                          env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_good_bad_deck_runs(work, lmp_exe):
    rc, out = run_bad(work, lmp_exe)
    assert rc == 0, out[-2000:]


def test_malloc_tuning(work, lmp_exe):
    """glibc malloc keeps freed memory by default (said in the log); `malloc_tuning no` leaves
    it alone, and so does a MALLOC_*_ setting in the environment."""
    rc, out = run_bad(work, lmp_exe)
    assert rc == 0 and "Facet plugin: memory: glibc malloc keeps freed memory for reuse" in out
    rc, out = run_bad(work, lmp_exe, extra="malloc_tuning no")
    assert rc == 0 and "Facet plugin: memory" not in out
    rc, out = run_bad(work, lmp_exe, extra_env={"MALLOC_TRIM_THRESHOLD_": "1000000"})
    assert rc == 0 and "glibc malloc left as set in the environment" in out


def test_missing_model_file(work, lmp_exe):
    rc, out = run_bad(work, lmp_exe, model="/nonexistent/m-plugin.pt")
    assert rc != 0 and "cannot open model file /nonexistent/m-plugin.pt" in out
    assert "--format plugin" in out


def test_corrupt_model_file(work, lmp_exe):
    d = work["d"]
    data = work["file"].read_bytes()
    (d / "corrupt-plugin.pt").write_bytes(data[: len(data) // 3])
    rc, out = run_bad(work, lmp_exe, model=d / "corrupt-plugin.pt")
    assert rc != 0 and "not a readable Facet plugin file" in out and "--format plugin" in out


def test_mliap_file_is_refused(work, lmp_exe):
    d = work["d"]
    assert deploy_main([str(d / "model.pt"), "-o", str(d / "other-mliap.pt")]) == 0
    rc, out = run_bad(work, lmp_exe, model=d / "other-mliap.pt")
    assert rc != 0 and "not a readable Facet plugin file" in out


def rewritten_file(work, name: str, edit) -> Path:
    """The tiny model's plugin file saved again as ``name`` in the work folder with its metadata
    changed by ``edit(meta)`` (in place), or without metadata when ``edit`` is None."""
    out = work["d"] / name
    extra = {METADATA_FILE: ""}
    with quiet_torchscript():
        module = torch.jit.load(str(work["file"]), _extra_files=extra)
        if edit is None:
            torch.jit.save(module, str(out))
        else:
            meta = json.loads(extra[METADATA_FILE])
            edit(meta)
            torch.jit.save(module, str(out), _extra_files={METADATA_FILE: json.dumps(meta)})
    return out


def test_newer_fused_kernels_are_refused(work, lmp_exe):
    """A file that calls newer fused kernels than the plugin has stops with what to do."""
    rc, out = run_bad(work, lmp_exe, model=rewritten_file(
        work, "newer-ops-plugin.pt", lambda meta: meta.update(fused_kernels=99)))
    assert rc != 0 and "fused kernels of version 99 and this plugin has version" in out
    assert "deploy/build_plugin.sh" in out and "--no-fused-kernels" in out


def test_other_format_version_is_refused(work, lmp_exe):
    rc, out = run_bad(work, lmp_exe, model=rewritten_file(
        work, "v2-plugin.pt", lambda meta: meta.update(format_version=2)))
    assert rc != 0 and "format version 2, this plugin reads version 1" in out
    assert "rebuild the plugin" in out
    # a TorchScript file without our metadata
    rc, out = run_bad(work, lmp_exe, model=rewritten_file(work, "nometa-plugin.pt", None))
    assert rc != 0 and "without Facet plugin metadata" in out


def test_unknown_element(work, lmp_exe):
    rc, out = run_bad(work, lmp_exe, elements="Cu Pt")
    assert rc != 0 and "element Pt (atom type 2) is not in the Facet model" in out
    assert "Cu Au Ag" in out


def test_newton_off(work, lmp_exe):
    rc, out = run_bad(work, lmp_exe, newton="newton off")
    assert rc != 0 and "requires newton pair on" in out and "newton on" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_device_without_gpu(work, lmp_exe):
    rc, out = run_bad(work, lmp_exe, extra="device cuda")
    assert rc != 0 and "libtorch sees no GPU" in out and "device cpu" in out


def test_cuda_file_runs_on_cpu_with_cpu_chunking(work, lmp_exe):
    """A file written for CUDA runs with `device cpu`, with the CPU's chunking defaults (the
    file carries them for each device type)."""
    d = work["d"]
    assert deploy_main([str(d / "model.pt"), "--format", "plugin", "--device", "cuda", "-o",
                        str(d / "cuda-plugin.pt")]) == 0
    rc, out = run_bad(work, lmp_exe, model=d / "cuda-plugin.pt", extra="device cpu")
    assert rc == 0, out[-2000:]
    assert "float64 on cpu" in out
    limit = int(re.search(r"chunks of 4096 pairs above (\d+) pairs", out).group(1))
    assert limit >= 16384  # the CPU default, or more where the memory budget allows


EVALUATION = re.compile(r"Facet plugin: (single pass|recomputing) evaluation on rank 0")
SIZED = re.compile(r"single pass up to (\d+) pairs per rank \(working memory ([\d.]+) kB per "
                   r"pair, measured when the file was written; budget ([\d.]+) MiB: (.*)\)")


def test_single_pass_sized_by_memory(work, lmp_exe):
    """The file records the single pass's working memory per pair (a float32 file about half
    of a float64 one's); on the CPU the plugin takes the single pass up to the pairs that fit a
    memory budget: `single_pass_memory MiB`, by default half the node's available memory over
    its ranks, at most 2 GiB, and never fewer pairs than the file's 16384."""
    d = work["d"]
    bpp = read_plugin_metadata(work["file"])["single_pass_bytes_per_pair"]
    assert bpp > 100  # fused kernels keep ~1-2 kB per pair for the shipped model, torch ~9-18
    assert deploy_main([str(d / "model.pt"), "--format", "plugin", "--dtype", "float32", "-o",
                        str(d / "sized32-plugin.pt")]) == 0
    ratio = read_plugin_metadata(d / "sized32-plugin.pt")["single_pass_bytes_per_pair"] / bpp
    assert 0.4 < ratio < 0.6

    rc, out = run_bad(work, lmp_exe)  # automatic budget
    assert rc == 0, out[-2000:]
    limit, kb, budget, why = SIZED.search(out).groups()
    avail, ranks = re.search(r"half the node's available (\d+) MiB over its (\d+) rank",
                             why).groups()
    assert int(ranks) == 1 and float(kb) == pytest.approx(bpp / 1000, abs=0.06)
    assert float(budget) == pytest.approx(min(2048, int(avail) / 2), abs=1)
    assert int(limit) == pytest.approx(max(16384, float(budget) * 2**20 / bpp), rel=1e-3)
    assert EVALUATION.search(out).group(1) == "single pass"  # 108 atoms, a few thousand pairs

    # an explicit budget sets the limit (and may lower it): both evaluations, by the budget
    rc, out = run_bad(work, lmp_exe, extra="single_pass_memory 0.01")
    assert rc == 0, out[-2000:]
    assert int(SIZED.search(out).group(1)) == int(0.01 * 2**20 / bpp)
    assert "budget 0.0 MiB: single_pass_memory" in out
    assert EVALUATION.search(out).group(1) == "recomputing"
    rc, out = run_bad(work, lmp_exe, extra="single_pass_memory 500")
    assert rc == 0 and int(SIZED.search(out).group(1)) == int(500 * 2**20 / bpp)
    assert EVALUATION.search(out).group(1) == "single pass"

    # without the allocator setting the file's limit stays (large single passes page-fault)
    rc, out = run_bad(work, lmp_exe, extra="malloc_tuning no single_pass_memory 500")
    assert rc == 0 and SIZED.search(out) is None and "malloc_tuning no (large" in out

    # single_pass_edges wins; the budget then says it does nothing
    rc, out = run_bad(work, lmp_exe, extra="single_pass_edges 7 single_pass_memory 500")
    assert rc == 0 and SIZED.search(out) is None
    assert "single_pass_memory has no effect here: single_pass_edges is given" in out
    assert EVALUATION.search(out).group(1) == "recomputing"


def test_file_without_memory_per_pair(work, lmp_exe):
    """A file written before the memory per pair was recorded keeps its single_pass_edges."""
    old = rewritten_file(work, "old-plugin.pt",
                         lambda meta: meta.pop("single_pass_bytes_per_pair"))
    rc, out = run_bad(work, lmp_exe, model=old)
    assert rc == 0 and SIZED.search(out) is None
    assert "chunks of 4096 pairs above 16384 pairs" in out
    rc, out = run_bad(work, lmp_exe, model=old, extra="single_pass_memory 500")
    assert rc == 0 and "written by an older facet-deploy" in out


def test_bad_keyword(work, lmp_exe):
    rc, out = run_bad(work, lmp_exe, extra="chunk 5")
    assert rc != 0 and "unknown keyword chunk" in out
