"""Through the calculators (what ASE users run): default FacetCalculator (eager; recomputing
above 16384 pairs), FacetCalculator(script=True) (TorchScript, same defaults) and the AOTI
prototype calculator (single pass), interleaved; CPU time per call (process_time) and wall
time, median of --repeats. Also: the machine's 1-thread matmul rate measured in the same run
(square 1024 and the model's S2-MLP shape) and the ratio to the FLOP limit.

    OMP_NUM_THREADS=1 python bench_calc.py --dtype float32 --sizes 108,500,2048 \
        --mflop-per-atom 23.0
"""
import argparse
import json
import time
import warnings

import numpy as np
import torch
from aoti_calc import AOTICalculator
from ase.calculators.calculator import all_changes
from common import PKG_DIR, make_atoms, make_model
from flops_and_rate import rate

from facet.calculator import FacetCalculator

warnings.filterwarnings("ignore")
ap = argparse.ArgumentParser()
ap.add_argument("--model", default="s")
ap.add_argument("--dtype", default="float32")
ap.add_argument("--sizes", default="108,500,2048")
ap.add_argument("--variants", default="default,script,aoti")
ap.add_argument("--pkg", default=None)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--mflop-per-atom", type=float, required=True,
                help="model matmul FLOPs per atom (energy+forces), from flops_and_rate.py")
a = ap.parse_args()
torch.set_num_threads(a.threads)
dt = getattr(torch, a.dtype)
model = make_model(a.model, dt)
pkg = a.pkg or f"{PKG_DIR}/facet-slots-{a.model}-{a.dtype}.pt2"
calcs = {}
for v in a.variants.split(","):
    if v == "default":
        calcs[v] = FacetCalculator(model, dtype=a.dtype)
    elif v == "script":
        calcs[v] = FacetCalculator(model, dtype=a.dtype, script=True)
    elif v == "aoti":
        calcs[v] = AOTICalculator(pkg, model.config.elements, model.config.r_max, a.dtype)
    elif v == "single":  # eager, single pass at every size
        calcs[v] = FacetCalculator(model, dtype=a.dtype, chunk_edges=0)


def gflops():
    return {"square1024": rate((0, 1024, 1024, 1024), dt, 0.5),
            "s2mlp": rate((0, 66096, 32, 16), dt, 0.5)}


rows = []
for n in [int(s) for s in a.sizes.split(",")]:
    atoms = make_atoms(n, elements=tuple(model.config.elements))
    t_cpu = {k: [] for k in calcs}
    t_wall = {k: [] for k in calcs}
    res = {}
    for k, c in calcs.items():
        c.calculate(atoms, ["energy", "forces"], all_changes)
        res[k] = (c.results["energy"], c.results["forces"].copy())
    rates = [gflops()]
    names = list(calcs)
    for rep in range(a.repeats):
        for k in (names if rep % 2 == 0 else names[::-1]):
            t0, w0 = time.process_time(), time.perf_counter()
            calcs[k].calculate(atoms, ["energy", "forces"], all_changes)
            t_cpu[k].append(time.process_time() - t0)
            t_wall[k].append(time.perf_counter() - w0)
        rates.append(gflops())
    peak = float(np.median([r["square1024"] for r in rates]))
    limit = a.mflop_per_atom * 1e6 / (peak * 1e9) * 1e3  # ms/atom
    ref = res[names[0]]
    row = {"n": n, "dtype": a.dtype, "gflops_square1024": peak,
           "gflops_s2mlp": float(np.median([r["s2mlp"] for r in rates])),
           "limit_ms_per_atom": limit,
           "cpu_ms_per_atom": {k: 1e3 * float(np.median(v)) / n for k, v in t_cpu.items()},
           "wall_ms_per_atom": {k: 1e3 * float(np.median(v)) / n for k, v in t_wall.items()},
           "max_dF": {k: float(np.abs(res[k][1] - ref[1]).max()) for k in res},
           "dE": {k: float(abs(res[k][0] - ref[0])) for k in res}}
    rows.append(row)
    print(f"n={n} {a.dtype}: 1-thread matmul {peak:.1f} GFLOP/s (S2-MLP shape "
          f"{row['gflops_s2mlp']:.1f}); limit {limit:.3f} ms/atom at {a.mflop_per_atom} MFLOP/atom")
    for k in calcs:
        c = row["cpu_ms_per_atom"][k]
        print(f"   {k:8s} {c:.3f} CPU ms/atom ({row['wall_ms_per_atom'][k]:.3f} wall) = "
              f"{c / limit:.2f}x limit; |dE| {row['dE'][k]:.1e} max|dF| {row['max_dF'][k]:.1e}",
              flush=True)
print("JSON", json.dumps(rows))
