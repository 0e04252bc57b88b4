"""AOTInductor packages (facet.aoti, ``facet-deploy --format aoti``): the package's programs, its
metadata and compatibility checks, the calculator and ML-IAP runtimes against TorchScript and
eager (float64 to 1e-10), a path with no torch.jit at all, and LAMMPS on 1 and 2 ranks (plain
and KOKKOS paths).

One package of the tiny model is compiled per session (all programs, through the CLI): about
2 CPU-minutes, several wall minutes on a loaded machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lammps_frame, randomized_model, triclinic_alloy

import facet
from facet.aoti import (
    AOTIPotential,
    FacetPackageError,
    check_compatible,
    compatibility_problems,
    read_metadata,
)
from facet.calculator import FacetCalculator
from facet.contract import FacetPotential
from facet.graph import build_graph

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def aoti_model():
    """The tiny preset: two message-passing layers (one equivariant, one scalar), three
    elements (each layer kind is its own program; two layers keep the compile short)."""
    return randomized_model(facet.facet_tiny(["Cu", "Au", "Ag"]), seed=11)


@pytest.fixture(scope="session")
def deployed(aoti_model, tmp_path_factory):
    """``facet-deploy model.pt --format aoti``: the package and the ML-IAP file.

    ``FACET_TEST_AOTI_DIR=<dir>`` (development only) keeps them in ``<dir>`` and reuses them
    when they are there already (same model, same torch), instead of compiling afresh."""
    from facet.cli.deploy import main as deploy_main

    keep = os.environ.get("FACET_TEST_AOTI_DIR")
    d = Path(keep) if keep else tmp_path_factory.mktemp("aoti")
    d.mkdir(parents=True, exist_ok=True)
    ckpt = facet.save_model(aoti_model, d / "model.pt")
    if not (keep and (d / "model.pt2").exists() and (d / "model-mliap.pt").exists()
            and read_metadata(d / "model.pt2")["torch_version"] == torch.__version__):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert deploy_main([str(ckpt), "--format", "aoti", "-o", str(d / "model.pt2"),
                                "--no-symmetry-check"]) == 0
        (d / "deploy.txt").write_text(printed.getvalue())
    return d, ckpt, d / "model.pt2", d / "model-mliap.pt"


def graph_tensors(atoms, model):
    g = build_graph(atoms, model.config.elements, model.r_max)
    return (torch.tensor(g.species), torch.tensor(g.centre), torch.tensor(g.neighbour),
            torch.tensor(g.rij))


def test_metadata(deployed, aoti_model):
    meta = read_metadata(deployed[2])
    assert meta["format"] == "facet-aoti" and meta["format_version"] == 1
    assert meta["torch_version"] == torch.__version__
    assert meta["dtype"] == "float64" and meta["device"] == "cpu"
    assert meta["elements"] == ["Cu", "Au", "Ag"] and meta["r_max"] == aoti_model.r_max
    assert meta["num_layers"] == 2 and meta["feature_dims"] == aoti_model.feature_dims
    assert meta["cpu_isa"]
    assert meta["programs"] == ["energy_forces", "embed", "readout", "layer0", "layer0_vjp",
                                "layer1", "layer1_vjp"]
    assert not compatibility_problems(meta)


def rewritten(package: bytes, **changes) -> bytes:
    """The package with some metadata fields changed."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("extra/facet.json"):
                data = json.dumps({**json.loads(data), **changes}).encode()
            dst.writestr(item, data)
    return out.getvalue()


def test_incompatible_packages_fail_clearly(deployed):
    data = deployed[2].read_bytes()
    with pytest.raises(FacetPackageError, match="compiled with torch 2.12.0 and this is torch"):
        AOTIPotential(rewritten(data, torch_version="2.12.0"))
    with pytest.raises(FacetPackageError, match="compiled for cpu and is asked to run on cuda"):
        check_compatible(read_metadata(data), "cuda")
    with pytest.raises(FacetPackageError, match="instruction set 'avx1024'"):
        FacetCalculator(rewritten(data, cpu_isa="avx1024"), backend="aoti")
    with pytest.raises(FacetPackageError, match="not a Facet AOTInductor package"):
        read_metadata(b"not a zip")
    with pytest.raises(ValueError, match="compiled for float64, not float32"):
        FacetCalculator(deployed[2], dtype="float32")


@pytest.mark.parametrize("evaluation", ["single pass", "recomputing"])
def test_calculator_matches_torchscript(deployed, aoti_model, evaluation):
    """FacetCalculator on the package = on the TorchScript contract (float64, 1e-10), single
    pass and the chunked recomputing evaluation over the per-layer programs."""
    atoms = triclinic_alloy(seed=4, repeat=(2, 2, 3))
    atoms.symbols[::5] = "Ag"
    chunking = {} if evaluation == "single pass" else {"chunk_edges": 40,
                                                        "single_pass_edges": 0}
    calc = FacetCalculator(deployed[2], **chunking)
    a = atoms.copy()
    a.calc = calc
    ref = atoms.copy()
    ref.calc = FacetCalculator(aoti_model, backend="torchscript")
    assert abs(a.get_potential_energy() - ref.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(a.get_potential_energies(), ref.get_potential_energies(),
                               atol=1e-10)
    np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-10)
    np.testing.assert_allclose(a.get_stress(), ref.get_stress(), atol=1e-10)
    assert calc.potential.last_evaluation == evaluation


@pytest.mark.parametrize("evaluation", ["single pass", "recomputing"])
def test_contract_with_ghosts_and_tiny_inputs(deployed, aoti_model, evaluation):
    """The contract with ghost atoms (hop pruning), and inputs below the programs' minimum
    sizes (one atom, no pairs, one pair), equal the eager FacetPotential."""
    pot = AOTIPotential(deployed[2])
    if evaluation == "recomputing":
        pot.chunk_edges, pot.single_pass_edges = 25, 0
    ref = FacetPotential(aoti_model, chunk_edges=0)
    species, centre, neighbour, rij = graph_tensors(triclinic_alloy(seed=1), aoti_model)
    n = len(species)
    cases = [(species, centre, neighbour, rij, nlocal) for nlocal in (n, n // 3, 1)]
    empty = torch.zeros(0, dtype=torch.long)
    cases.append((species[:1], empty, empty, torch.zeros(0, 3, dtype=torch.float64), 1))
    cases.append((species[:3], empty, empty, torch.zeros(0, 3, dtype=torch.float64), 3))
    one = torch.tensor([0])
    cases.append((species[:2], one, one + 1,
                  torch.tensor([[2.1, 0.3, -0.2]], dtype=torch.float64), 2))
    for sp, c, nb, x, nlocal in cases:
        e0, g0 = ref(sp, c, nb, x, nlocal)
        e1, g1 = pot(sp, c, nb, x, nlocal)
        assert e1.shape == e0.shape and g1.shape == g0.shape
        assert torch.allclose(e1, e0, atol=1e-10, rtol=0), (len(sp), nlocal)
        assert torch.allclose(g1, g0, atol=1e-10, rtol=0), (len(sp), nlocal)
        if c.numel():  # no pairs: nothing to chunk, always the single pass
            assert pot.last_evaluation == evaluation


def test_runs_without_torch_jit(deployed, aoti_model, monkeypatch):
    """The AOTI package and the eager calculator need no TorchScript: every torch.jit entry
    that compiles, traces, saves or loads is blocked here."""
    def blocked(*args, **kwargs):
        raise AssertionError("torch.jit was called")

    for name in ("script", "trace", "trace_module", "load", "save", "freeze"):
        monkeypatch.setattr(torch.jit, name, blocked)
    atoms = triclinic_alloy(seed=3)
    results = []
    for calc in (FacetCalculator(deployed[2]), FacetCalculator(aoti_model)):
        a = atoms.copy()
        a.calc = calc
        results.append((a.get_potential_energy(), a.get_forces()))
    assert abs(results[0][0] - results[1][0]) < 1e-10
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-10)
    # the ML-IAP object built from the package loads no TorchScript either
    obj = torch.load(deployed[3], weights_only=False)
    assert obj.aoti_bytes and not obj.script_bytes and not obj.layers_bytes
    obj._load()
    assert isinstance(obj._module, AOTIPotential)


def test_deployed_mliap_object(deployed):
    d, ckpt, package, mliap = deployed
    obj = torch.load(mliap, weights_only=False)
    assert obj.aoti_bytes == package.read_bytes()
    assert obj.metadata["format"] == "aoti" and obj.element_types == ["Cu", "Au", "Ag"]
    # the deck lines printed: ML-IAP object and the native plugin on the package (not when a
    # FACET_TEST_AOTI_DIR package was reused)
    if not (d / "deploy.txt").exists() and os.environ.get("FACET_TEST_AOTI_DIR"):
        return
    printed = (d / "deploy.txt").read_text()
    assert f"pair_style mliap unified {mliap} 1" in printed
    assert f"  pair_style facet {package}\n" in printed
    assert "  pair_coeff * * Cu Au Ag\n" in printed


# -- LAMMPS: the ML-IAP object carrying the package, plain and KOKKOS paths, 1 and 2 ranks ----
@pytest.fixture(scope="session")
def lammps_case(deployed, aoti_model):
    from lammps_utils import require_lammps

    require_lammps()
    d = deployed[0]
    atoms = lammps_frame(triclinic_alloy(seed=2, repeat=(3, 3, 3)))
    atoms.symbols[::5] = "Ag"
    import ase.io

    ase.io.write(d / "alloy.xyz", atoms)
    ref = atoms.copy()
    ref.calc = FacetCalculator(aoti_model)
    expected = {"energy": ref.get_potential_energy(), "forces": ref.get_forces(),
                "stress": ref.get_stress(), "energies": ref.get_potential_energies()}
    # the deployed object with the package, forced onto either evaluation at every call (the
    # plain path's pair count with ghosts is above the CPU default single_pass_edges here;
    # chunk_edges 0: one chunk on the KOKKOS path, which otherwise always chunks on the CPU)
    obj = torch.load(deployed[3], weights_only=False)
    obj.chunk_edges, obj.single_pass_edges = 0, 1 << 30
    torch.save(obj, d / "single-mliap.pt")
    obj.chunk_edges, obj.single_pass_edges = 150, 0
    torch.save(obj, d / "chunked-mliap.pt")
    return d, expected


@pytest.mark.lammps
@pytest.mark.mpi
@pytest.mark.parametrize(("nproc", "chunked"), [(1, False), (2, False), (2, True)],
                         ids=["single-1", "single-2", "recomputing-2"])
def test_lammps_plain_path(lammps_case, nproc, chunked):
    from lammps_utils import assert_matches_reference, run_driver

    d, ref = lammps_case
    model = d / ("chunked-mliap.pt" if chunked else "single-mliap.pt")
    res = run_driver(nproc, model, d / "alloy.xyz", d / f"plain{nproc}{chunked}.json")
    assert res["path"].startswith("plain")
    assert res["evaluations"] == [("recomputing" if chunked else "single pass")] * nproc
    assert_matches_reference(res, ref["energy"], ref["energies"], ref["forces"], ref["stress"])


@pytest.mark.lammps
@pytest.mark.mpi
@pytest.mark.kokkos
@pytest.mark.parametrize(("nproc", "variant"), [(1, "single"), (2, "chunked"), (1, "default")],
                         ids=["single-1", "recomputing-2", "default-1"])
def test_lammps_kokkos_path(lammps_case, deployed, nproc, variant):
    """One chunk (chunk_edges 0), forced chunks of 150 pairs, and the deployed defaults, which
    on the CPU chunk below single_pass_edges too (the layer programs recompute anyway)."""
    from lammps_utils import assert_matches_reference, has_kokkos, run_driver

    if not has_kokkos():
        pytest.skip("this LAMMPS build has no KOKKOS")
    d, ref = lammps_case
    model = {"single": d / "single-mliap.pt", "chunked": d / "chunked-mliap.pt",
             "default": deployed[3]}[variant]
    res = run_driver(nproc, model, d / "alloy.xyz", d / f"kk{nproc}{variant}.json", "--kokkos")
    assert res["path"].startswith("kokkos (per-layer halo exchange)")
    expected = "single pass" if variant == "single" else "recomputing"
    assert res["evaluations"] == [expected] * nproc
    assert all(local == computed for local, computed in res["atom_counts"])
    assert_matches_reference(res, ref["energy"], ref["energies"], ref["forces"], ref["stress"])


# -- LAMMPS: the native plugin (pair_style facet) running the package from C++ ---------------
@pytest.fixture(scope="session")
def plugin_case(deployed, aoti_model):
    """The package, the plugin's TorchScript file of the same model, a triclinic 3-element
    cell and its ASE reference."""
    from lammps_utils import require_lammps
    from plugin_utils import ase_reference, require_plugin, write_data

    from facet.cli.deploy import main as deploy_main

    lmp = require_lammps()
    lib = require_plugin()
    d = deployed[0] / "plugin"
    d.mkdir(exist_ok=True)
    assert deploy_main([str(deployed[1]), "--format", "plugin", "-o",
                        str(d / "model-plugin.pt")]) == 0
    atoms = lammps_frame(triclinic_alloy(seed=6, repeat=(3, 3, 3)))
    atoms.symbols[::6] = "Ag"
    data = write_data(d, atoms, ["Cu", "Au", "Ag"], "alloy")
    return {"d": d, "lmp": lmp, "lib": lib, "package": deployed[2], "atoms": atoms,
            "data": data, "ref": ase_reference(aoti_model, atoms),
            "torchscript": d / "model-plugin.pt"}


def run_plugin(case, model: Path, tag: str, nproc: int, extra: str = "", atoms=None,
               data: Path | None = None, **deck) -> dict:
    from plugin_utils import deck_for, pair_lines, results, run_lmp

    d = case["d"]
    pair = pair_lines(model, ["Cu", "Au", "Ag"], extra)
    run_lmp(d, case["lmp"], deck_for(case["lib"], data or case["data"], pair, dump=tag, **deck),
            nproc, tag=tag)
    return results(d, case["atoms"] if atoms is None else atoms, tag)


@pytest.mark.lammps
@pytest.mark.plugin
@pytest.mark.mpi
@pytest.mark.parametrize(("nproc", "extra"), [(1, "single_pass_edges 100000"), (2, ""),
                                              (2, "chunk_edges 150 single_pass_edges 0")],
                         ids=["one-chunk-1", "default-2", "chunks-2"])
def test_plugin_runs_the_package(plugin_case, nproc, extra):
    """`pair_style facet model.pt2`: the C++ plugin runs the package's per-layer programs with
    its halo exchanges; equal to ASE (parity tolerances) and to the same plugin on the
    TorchScript file (1e-10: the same model, another runtime), per-atom virials included."""
    from plugin_utils import assert_ref

    tag = f"aoti{nproc}{'c' if extra else ''}"
    res = run_plugin(plugin_case, plugin_case["package"], tag, nproc, extra)
    log = (plugin_case["d"] / f"log.{tag}").read_text()
    assert "AOTInductor package" in log and "AOTInductor programs" in log
    # packages on the CPU: always in chunks (of 4096 pairs by default; here fewer pairs)
    chunking = {"chunk_edges": "4096", "single_pass_edges": "0"}
    chunking.update(zip(extra.split()[::2], extra.split()[1::2], strict=True))
    assert (f"chunks of {chunking['chunk_edges']} pairs above {chunking['single_pass_edges']} "
            "pairs") in log
    evaluation = "single pass" if chunking["single_pass_edges"] == "100000" else "recomputing"
    assert f"{evaluation} evaluation on rank 0" in log
    assert_ref(res, plugin_case["ref"])
    ts = run_plugin(plugin_case, plugin_case["torchscript"], tag + "ts", nproc, extra)
    for key in ("energies", "forces", "stress", "virial", "virial_atoms"):
        np.testing.assert_allclose(res[key], ts[key], atol=1e-10, rtol=0, err_msg=key)
    assert abs(res["energy"] - ts["energy"]) < 1e-10
    np.testing.assert_allclose(res["virial_atoms"], res["virial"], rtol=1e-10, atol=1e-10)


@pytest.mark.lammps
@pytest.mark.plugin
@pytest.mark.mpi
def test_plugin_package_empty_rank_and_tiny_chunks(plugin_case, aoti_model):
    """A slab in the lower half of the box on `processors 1 1 2`: the upper rank owns no atoms
    and sees no ghosts; with chunks of 1 pair most chunks are below the programs' minimum
    sizes (dummy padding)."""
    import re

    from ase.build import bulk
    from plugin_utils import ase_reference, assert_ref, write_data

    rng = np.random.default_rng(1)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 2))
    atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
    atoms.symbols[rng.random(len(atoms)) < 0.4] = "Au"
    atoms.positions[:, 2] += 1.0
    atoms.set_cell([atoms.cell[0, 0], atoms.cell[1, 1], 40.0])
    atoms.pbc = [True, True, False]
    data = write_data(plugin_case["d"], atoms, ["Cu", "Au", "Ag"], "lowslab")
    res = run_plugin(plugin_case, plugin_case["package"], "aotislab", 2,
                     "chunk_edges 1 single_pass_edges 0", atoms=atoms, data=data,
                     boundary="p p f", before_read="processors 1 1 2")
    log = (plugin_case["d"] / "log.aotislab").read_text()
    assert re.search(r"Nlocal:.*\s0 min", log) and re.search(r"Nghost:.*\s0 min", log)
    assert_ref(res, ase_reference(aoti_model, atoms))


@pytest.mark.lammps
@pytest.mark.plugin
def test_plugin_refuses_packages_it_cannot_run(plugin_case):
    """Another torch version or CPU ISA, a package without the per-layer programs, a truncated
    package: a LAMMPS error that says what to do."""
    from plugin_utils import deck_for, pair_lines, run_lmp

    d = plugin_case["d"]
    data = plugin_case["package"].read_bytes()
    cases = {
        "torch.pt2": (rewritten(data, torch_version="2.12.0"),
                      ["compiled with torch 2.12.0 and this plugin runs libtorch",
                       "--format aoti"]),
        "isa.pt2": (rewritten(data, cpu_isa="avx1024"),
                    ["compiled for the CPU instruction set avx1024"]),
        "single.pt2": (rewritten(data, programs=["energy_forces"]),
                       ["lacks the per-layer program embed", "--aoti-programs"]),
        "device.pt2": (rewritten(data, device="cuda"),
                       ["compiled for cuda and is asked to run on cpu"]),
        "cut.pt2": (data[: len(data) // 2], ["not a readable Facet plugin file or package"]),
    }
    for name, (blob, messages) in cases.items():
        (d / name).write_bytes(blob)
        extra = "device cpu" if name == "device.pt2" else ""
        deck = deck_for(plugin_case["lib"], plugin_case["data"],
                        pair_lines(d / name, ["Cu", "Au", "Ag"], extra), dump=name)
        rc, out = run_lmp(d, plugin_case["lmp"], deck, tag=name, check=False)
        assert rc != 0, name
        for message in messages:
            assert message in out, (name, out[-1500:])


@pytest.mark.lammps
@pytest.mark.plugin
@pytest.mark.mpi
def test_plugin_package_leaves_no_files_behind(plugin_case, tmp_path):
    """libtorch extracts each program into a directory under $TMPDIR that only its destructor
    removes, and a LAMMPS error exit runs none: the plugin removes them itself once loaded, so
    neither a finished run nor a run stopped by an error (here an element the model lacks, on 2
    ranks) leaves anything in $TMPDIR."""
    import shutil
    import subprocess

    from lammps_utils import env
    from plugin_utils import deck_for, pair_lines

    d = plugin_case["d"]
    for tag, elements, ok in (("tmpok", ["Cu", "Au", "Ag"], True),
                              ("tmperr", ["Cu", "Au", "Pt"], False)):
        scratch = tmp_path / tag
        scratch.mkdir()
        deck = deck_for(plugin_case["lib"], plugin_case["data"],
                        pair_lines(plugin_case["package"], elements), dump=tag)
        (d / f"in.{tag}").write_text(deck)
        proc = subprocess.run([shutil.which("mpirun") or "mpirun", "-np", "2",
                               str(plugin_case["lmp"]), "-in", f"in.{tag}", "-log", f"log.{tag}"],
                              cwd=d, env={**env(), "TMPDIR": str(scratch)}, capture_output=True,
                              text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert (proc.returncode == 0) == ok, out[-2000:]
        if not ok:
            assert "element Pt (atom type 3) is not in the Facet model" in out
        assert list(scratch.iterdir()) == [], (tag, list(scratch.iterdir()))


def test_python_loader_leaves_no_extracted_programs(deployed, tmp_path):
    """The same for the Python loader (ASE calculator, ML-IAP object): a process that loads
    the package, runs it and then dies without cleaning up (as an aborted MPI job does) leaves
    no extracted programs in $TMPDIR (Inductor's shared cache directory may stay)."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from ase.build import bulk\n"
        "from facet.calculator import FacetCalculator\n"
        "atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)\n"
        "atoms.calc = FacetCalculator(sys.argv[1])\n"
        "print('ENERGY', atoms.get_potential_energy())\n"
        "os._exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(deployed[2])],
                          env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 3 and "ENERGY" in proc.stdout, proc.stderr[-2000:]
    left = [p.name for p in tmp_path.iterdir() if not p.name.startswith("torchinductor_")]
    assert left == [], left


@pytest.mark.lammps
@pytest.mark.plugin
@pytest.mark.mpi
def test_plugin_runs_a_float32_package(plugin_case, deployed):
    """A float32 package (per-layer programs only) in the plugin on 2 ranks, in chunks: equal to
    ASE in float32 (1e-5 eV/atom, 1e-4 eV/Å, as the float32 TorchScript file) and to the
    plugin on the float32 TorchScript file of the same model (both float32 roundings apart:
    1e-5 eV/Å)."""
    from plugin_utils import ase_reference

    from facet.cli.deploy import main as deploy_main

    d = plugin_case["d"]
    package = d / "model32.pt2"
    keep = os.environ.get("FACET_TEST_AOTI_DIR")
    if not (keep and package.exists()
            and read_metadata(package)["torch_version"] == torch.__version__):
        with contextlib.redirect_stdout(io.StringIO()):
            assert deploy_main([str(deployed[1]), "--format", "aoti", "--aoti-programs",
                                "layers", "--dtype", "float32", "--threads", "1", "-o",
                                str(package), "--no-symmetry-check"]) == 0
    assert read_metadata(package)["dtype"] == "float32"
    assert deploy_main([str(deployed[1]), "--format", "plugin", "--dtype", "float32", "-o",
                        str(d / "model32-plugin.pt")]) == 0
    extra = "chunk_edges 150"
    res = run_plugin(plugin_case, package, "aoti32", 2, extra)
    assert "float32 on cpu" in (d / "log.aoti32").read_text()
    ts = run_plugin(plugin_case, d / "model32-plugin.pt", "aoti32ts", 2, extra)
    ref = ase_reference(facet.load_model(deployed[1], dtype=torch.float32),
                        plugin_case["atoms"], "float32")
    n = len(plugin_case["atoms"])
    assert abs(res["energy"] - ref["energy"]) / n < 1e-5
    np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-4)
    np.testing.assert_allclose(res["stress"], ref["stress"], atol=1e-5)
    np.testing.assert_allclose(res["forces"], ts["forces"], atol=1e-5)
    assert abs(res["energy"] - ts["energy"]) / n < 1e-6
    # and float32 is not float64 by accident: the float64 reference differs by rounding
    assert np.abs(res["forces"] - plugin_case["ref"]["forces"]).max() > 1e-9
