#!/usr/bin/env python
"""Compare a Facet model trained on the EMT data with EMT itself.

    python scripts/evaluate_emt_model.py examples/models/facet-emt-small.pt \\
        [--heldout-dir data/heldout] [--heldout data/emt_heldout_md.xyz] [--nve-steps 200] \\
        [--json out.json] [--only-heldout]

1. Errors on the held-out test sets of ``facet.data.emt.heldout_sets`` (high-temperature MD,
   vacancies and strained cells, surfaces with adatoms: their own seed and generators, no
   training frame comes from them; read from ``--heldout-dir``, regenerated if missing) and
   along the held-out MD trajectory (a Cu-Pd-Au alloy at 700 K; ``facet.data.emt.heldout_md``).
2. Energy conservation: NVE (velocity Verlet, 1 fs) of a 108-atom random Cu-Pd-Au alloy started
   at 600 K, once with the Facet calculator and once with EMT: drift of the total energy.
3. fcc lattice constants of the seven elements (E(a) minimum) with Facet and with EMT.

Units: meV/atom, meV/Å, meV/Å^3, Å.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet

from facet.calculator import FacetCalculator
from facet.data.emt import ELEMENTS, LATTICE, heldout_table, random_alloy


def print_table(table: dict[str, dict[str, float]]) -> None:
    print(f"{'set':16s} {'frames':>6s} {'E MAE':>8s} {'E RMSE':>8s} {'E offset':>9s} "
          f"{'F MAE':>8s} {'F RMSE':>8s} {'<|F|>':>7s} {'S MAE':>7s}")
    for name, r in table.items():
        s = r.get("s_mae_mev_a3")
        print(f"{name:16s} {r['frames']:6d} {r['e_mae_mev_atom']:8.2f} {r['e_rmse_mev_atom']:8.2f} "
              f"{r['e_mean_offset_mev_atom']:+9.2f} {r['f_mae_mev_a']:8.1f} "
              f"{r['f_rmse_mev_a']:8.1f} {r['f_ref_mean_abs_mev_a']:7.0f} "
              + (f"{s:7.2f}" if s is not None else f"{'-':>7s}"))
    print("(meV/atom, meV/Å, meV/Å^3; E offset = mean of E_model - E_EMT per atom)")


def nve_drift(calc, steps: int, seed: int = 7) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    symbols = ["Cu", "Pd", "Au"]
    atoms = random_alloy(
        bulk("Cu", "fcc", a=LATTICE["Cu"], cubic=True).repeat((3, 3, 3)), rng, symbols
    )
    atoms.calc = calc
    with warnings.catch_warnings():  # newer ASE prefers thermalize_momenta (same sampling)
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=rng)
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    n = len(atoms)
    etot, temps = [], []

    def record():
        etot.append(atoms.get_total_energy() / n)
        temps.append(atoms.get_temperature())

    dyn.attach(record, interval=1)
    t0 = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - t0
    etot = np.array(etot)
    t_ps = np.arange(len(etot)) * 1e-3
    slope = np.polyfit(t_ps, etot, 1)[0]
    return {
        "atoms": n,
        "steps": steps,
        "timestep_fs": 1.0,
        "drift_end_mev_atom": 1000 * float(etot[-1] - etot[0]),
        "max_dev_mev_atom": 1000 * float(np.abs(etot - etot[0]).max()),
        "slope_mev_atom_per_ps": 1000 * float(slope),
        "mean_temperature_K": float(np.mean(temps)),
        "wall_s": wall,
    }


def lattice_constants(calc) -> dict[str, list[float]]:
    out = {}
    for el in ELEMENTS:
        a0 = LATTICE[el]
        grid = np.linspace(0.96 * a0, 1.04 * a0, 17)
        res = []
        for c in (calc, EMT()):
            es = []
            for a in grid:
                at = bulk(el, "fcc", a=a, cubic=True)
                at.calc = c
                es.append(at.get_potential_energy())
            k = int(np.argmin(es))
            k = min(max(k, 1), len(grid) - 2)
            p = np.polyfit(grid[k - 1 : k + 2], es[k - 1 : k + 2], 2)
            res.append(float(-p[1] / (2 * p[0])))
        out[el] = res  # [facet, emt]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="Facet checkpoint")
    p.add_argument("--heldout", default="data/emt_heldout_md.xyz",
                   help="the 700 K held-out trajectory (regenerated if missing)")
    p.add_argument("--heldout-dir", default="data/heldout",
                   help="folder of the held-out sets (regenerated if missing)")
    p.add_argument("--only-heldout", action="store_true",
                   help="only the held-out errors (no NVE, no lattice constants)")
    p.add_argument("--nve-steps", type=int, default=200)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    calc = FacetCalculator(args.model, dtype=args.dtype)
    result = {"model": args.model, "dtype": args.dtype}
    result["heldout"] = heldout_table(calc, args.heldout_dir, args.heldout)
    print_table(result["heldout"])
    if args.only_heldout:
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    result["nve_facet"] = nve_drift(calc, args.nve_steps)
    result["nve_emt"] = nve_drift(EMT(), args.nve_steps)
    print("NVE Facet:", json.dumps(result["nve_facet"], indent=1))
    print("NVE EMT:  ", json.dumps(result["nve_emt"], indent=1))
    result["lattice_constants_facet_emt"] = lattice_constants(calc)
    for el, (af, ae) in result["lattice_constants_facet_emt"].items():
        print(f"a({el}): Facet {af:.4f} Å, EMT {ae:.4f} Å")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
