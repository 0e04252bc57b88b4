"""`scripts/gpu_plugin.sh prepare`: the plugin files, parity structures and their CPU ASE
references (float64) that scripts/gpu_plugin_check.py needs on a machine without facet's Python
dependencies (it only needs python3 + numpy there).

Writes into --dir: <model>.pt plugin files, <case>.data LAMMPS data files and manifest.json with,
per parity case, the reference energy, per-atom energies, forces (LAMMPS frame, atom-ID order)
and pressure tensor (LAMMPS frame, bar) and the tolerances.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.lammps import Prism
from ase.io.lammpsdata import write_lammps_data

import facet
from facet.calculator import FacetCalculator
from facet.lammps.plugin import write_plugin_file

REPO = Path(__file__).resolve().parents[1]
BAR_PER_EV_A3 = 1.6021765e6  # LAMMPS metal units: nktv2p (bar per eV/Å^3), not CODATA


def lammps_frame(atoms):
    rcell, q = atoms.cell.standard_form()
    out = atoms.copy()
    out.positions = atoms.positions @ q.T
    out.set_cell(rcell, scale_atoms=False)
    return out


def facet_s_checkpoint(path: Path) -> Path:
    """Facet-S for Cu with every parameter perturbed by 0.1 randn (seed 0), as in the
    benchmarks."""
    torch.manual_seed(0)
    model = facet.build_model(facet.facet_s(["Cu"]), torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return facet.save_model(model, path)


def reference(model, atoms, species: list[str], dtype: str) -> dict:
    a = atoms.copy()
    a.calc = FacetCalculator(model, dtype=dtype)
    prism = Prism(atoms.cell.array, pbc=atoms.pbc)
    forces = prism.vector_to_lammps(a.get_forces())
    s = a.get_stress(voigt=False)
    r = prism.rot_mat
    p = -(r.T @ s @ r) * BAR_PER_EV_A3  # LAMMPS pressure tensor (bar)
    return {"energy": float(a.get_potential_energy()),
            "energies": a.get_potential_energies().tolist(),
            "forces": forces.tolist(),
            "pressure": [p[0, 0], p[1, 1], p[2, 2], p[0, 1], p[0, 2], p[1, 2]],
            "species": species, "natoms": len(atoms)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", required=True)
    args = p.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    fs = facet_s_checkpoint(d / "facet-s-checkpoint.pt")
    shipped = REPO / "examples" / "models" / "facet-emt-small.pt"
    models = {"facet-s-f64": (fs, "float64"), "facet-s-f32": (fs, "float32"),
              "emt-f64": (shipped, "float64")}
    for name, (ckpt, dtype) in models.items():
        write_plugin_file(ckpt, d / f"{name}.pt", dtype=dtype)

    rng = np.random.default_rng(3)
    alloy = bulk("Cu", "fcc", a=3.65).repeat((5, 5, 5))  # triclinic primitive cell, 125 atoms
    alloy.set_cell(alloy.cell.array + 0.1 * rng.standard_normal((3, 3)), scale_atoms=True)
    alloy.positions += 0.05 * rng.standard_normal(alloy.positions.shape)
    alloy.symbols[rng.random(len(alloy)) < 0.3] = "Au"
    alloy.symbols[rng.random(len(alloy)) < 0.15] = "Ni"
    alloy = lammps_frame(alloy)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))  # 256 atoms
    cu.rattle(0.05, seed=2)
    structures = {"alloy": (alloy, ["Au", "Ni", "Cu"]), "cu256": (cu, ["Cu"])}
    for name, (atoms, species) in structures.items():
        write_lammps_data(d / f"{name}.data", atoms, specorder=species, masses=True,
                          units="metal", atom_style="atomic")

    f64 = {"energy_per_atom": 1e-8, "energies": 1e-8, "forces": 1e-6, "stress": 1e-6}
    f32 = {"energy_per_atom": 1e-5, "energies": 1e-4, "forces": 1e-3, "stress": 1e-4}
    emt = facet.load_model(shipped, dtype=torch.float64)
    fsm = facet.load_model(fs, dtype=torch.float64)
    ref_alloy = reference(emt, alloy, ["Au", "Ni", "Cu"], "float64")
    ref_cu = reference(fsm, cu, ["Cu"], "float64")
    cases = [
        {"name": "shipped f64 alloy (triclinic, 3 elements)", "model": "emt-f64.pt",
         "data": "alloy.data", "ref": ref_alloy, "tol": f64, "extra": ""},
        {"name": "Facet-S f64 Cu, single pass", "model": "facet-s-f64.pt", "data": "cu256.data",
         "ref": ref_cu, "tol": f64, "extra": ""},
        {"name": "Facet-S f64 Cu, recomputing (chunks of 2000 pairs)",
         "model": "facet-s-f64.pt", "data": "cu256.data", "ref": ref_cu, "tol": f64,
         "extra": "chunk_edges 2000 single_pass_edges 0"},
        {"name": "Facet-S f32 Cu vs the f64 reference", "model": "facet-s-f32.pt",
         "data": "cu256.data", "ref": ref_cu, "tol": f32, "extra": ""},
    ]
    timing = [{"model": "facet-s-f32.pt", "label": "Facet-S float32"},
              {"model": "facet-s-f64.pt", "label": "Facet-S float64"},
              {"model": "emt-f64.pt", "label": "shipped float64"}]
    manifest = {"cases": cases, "timing": timing, "torch_version": str(torch.__version__),
                "facet_version": facet.__version__}
    (d / "manifest.json").write_text(json.dumps(manifest))
    print(f"wrote {len(models)} plugin files, {len(structures)} structures and "
          f"{len(cases)} parity cases to {d}", file=sys.stderr)


if __name__ == "__main__":
    main()
