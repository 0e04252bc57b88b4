"""Eager restructurings side by side (1 thread, CPU time, interleaved, median of --repeats):
the current code, the neighbour-slot TP (slots.py), and slots + the folded S2 input layer
(slots.s2_folded); agreement with the current code in float64 and float32, and the matmul FLOPs
per atom of each (torch.profiler with_flops).

    OMP_NUM_THREADS=1 python check_restructure.py --sizes 108,500
"""
import argparse
import time

import numpy as np
import slots as S
import torch
from common import graph_tensors, make_atoms, make_model
from torch.profiler import ProfilerActivity, profile

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="s")
ap.add_argument("--sizes", default="108,500")
ap.add_argument("--dtypes", default="float64,float32")
ap.add_argument("--repeats", type=int, default=5)
a = ap.parse_args()
torch.set_num_threads(1)


def ef_orig(model, sp, c, nb, rij):
    rij = rij.detach().requires_grad_(True)
    e = model(sp, c, nb, rij)
    (g,) = torch.autograd.grad([e.sum()], [rij])
    return e.detach(), g


def ef_slots(model, sp, c, nb, rij, fold):
    S.FOLD_S2 = fold
    try:
        return S.ef_slots(model, sp, nb, rij, S.neighbour_slots(c, len(sp), len(c)))
    finally:
        S.FOLD_S2 = False


def ef_intervals(model, sp, c, nb, rij, fold):
    S.FOLD_S2 = fold
    try:
        interval, sl = S.interval_inputs(model, c, rij, len(sp))
        return S.ef_intervals(model, sp, nb, rij, interval, sl)
    finally:
        S.FOLD_S2 = False


VARIANTS = {
    "current": ef_orig,
    "slots": lambda *x: ef_slots(*x, fold=False),
    "slots+fold": lambda *x: ef_slots(*x, fold=True),
    "intervals": lambda *x: ef_intervals(*x, fold=False),
    "intervals+fold": lambda *x: ef_intervals(*x, fold=True),
}


def mflops(fn, n):
    fn()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    return sum(e.flops for e in prof.key_averages() if e.flops) / n / 1e6


for dtn in a.dtypes.split(","):
    dt = getattr(torch, dtn)
    model = make_model(a.model, dt)
    for n in [int(s) for s in a.sizes.split(",")]:
        args = graph_tensors(model, make_atoms(n, elements=tuple(model.config.elements)), dt)
        ref = ef_orig(model, *args)
        out = {}
        for k, f in VARIANTS.items():
            e, g = f(model, *args)
            out[k] = {"de": (e - ref[0]).abs().max().item(),
                      "dg": (g - ref[1]).abs().max().item(),
                      "rel_dg": ((g - ref[1]).abs().max() / ref[1].abs().max()).item(),
                      "mflop": mflops(lambda f=f, m=model, x=args: f(m, *x), n), "t": []}
        names = list(VARIANTS)
        for rep in range(a.repeats):
            for k in (names if rep % 2 == 0 else names[::-1]):
                t0 = time.process_time()
                VARIANTS[k](model, *args)
                out[k]["t"].append(time.process_time() - t0)
        base = np.median(out["current"]["t"])
        for k, v in out.items():
            t = np.median(v["t"])
            print(f"{a.model} {dtn} n={n} {k:14s} {1e3 * t / n:.3f} CPU ms/atom ({base / t:.2f}x) "
                  f"{v['mflop']:.2f} MFLOP/atom; max|de| {v['de']:.1e} max|dg| {v['dg']:.1e} "
                  f"(rel {v['rel_dg']:.1e})", flush=True)
