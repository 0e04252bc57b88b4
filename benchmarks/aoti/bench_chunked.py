"""AOTI single pass vs AOTI recomputing evaluation over the per-layer package (chunks of
``--chunk-edges`` edges) vs the default eager FacetCalculator path (FacetPotential with its
defaults: single pass up to 16384 pairs, recomputing above), interleaved; CPU ms/atom (median)
and peak-RSS growth of each variant's first call.

    OMP_NUM_THREADS=1 python bench_chunked.py --model s --dtype float32 --sizes 2048,8000
"""
import argparse
import resource
import time

import numpy as np
import torch
from chunked import ChunkPlan, energy_forces_chunked
from common import PKG_DIR, graph_tensors, make_atoms, make_model
from slots import neighbour_slots
from torch._inductor.package import load_package
from torch.func import functional_call

from facet.contract import FacetPotential

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="s")
ap.add_argument("--dtype", default="float32")
ap.add_argument("--sizes", default="2048")
ap.add_argument("--variants", default="default,aoti,aoti-chunked")
ap.add_argument("--chunk-edges", type=int, default=4096)
ap.add_argument("--repeats", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(1)
dt = getattr(torch, a.dtype)
model = make_model(a.model, dt)
L = len(model.layers)
layers_pkg = f"{PKG_DIR}/facet-layers-{a.model}-{a.dtype}.pt2"
fns = {name: load_package(layers_pkg, name) for name in
       [f"layer{k}{s}" for k in range(L) for s in ("", "_vjp")]}
whole = torch._inductor.aoti_load_package(f"{PKG_DIR}/facet-slots-{a.model}-{a.dtype}.pt2")
pot = FacetPotential(model)
weights = {k: v.detach() for k, v in pot.named_parameters()}


def make_runners(sp, c, nb, rij, n):
    return {
        "default": lambda: functional_call(pot, weights, (sp, c, nb, rij, n)),
        "aoti": lambda: whole(sp, nb, rij, neighbour_slots(c, n, len(c))),
        "aoti-chunked": lambda: energy_forces_chunked(
            fns, model, sp, c, nb, rij, plan=ChunkPlan(c, nb, rij, n, a.chunk_edges)),
    }


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


for n in [int(s) for s in a.sizes.split(",")]:
    sp, c, nb, rij = graph_tensors(model, make_atoms(n), dt)
    runners = make_runners(sp, c, nb, rij, n)
    runners = {k: v for k, v in runners.items() if k in a.variants.split(",")}
    res, grow = {}, {}
    for k, f in runners.items():  # untimed first calls, lowest-memory first
        before = rss_mb()
        res[k] = f()
        grow[k] = rss_mb() - before
    ref = res[next(iter(res))]
    ts = {k: [] for k in runners}
    names = list(runners)
    for rep in range(a.repeats):
        for k in (names if rep % 2 == 0 else names[::-1]):
            t0 = time.process_time()
            runners[k]()
            ts[k].append(time.process_time() - t0)
    for k in runners:
        de = (res[k][0].double() - ref[0].double()).abs().max().item()
        dg = (res[k][1].double() - ref[1].double()).abs().max().item()
        print(f"n={n} {a.dtype} {k:13s} {1e3 * np.median(ts[k]) / n:.3f} CPU ms/atom; "
              f"max|de| {de:.1e} max|dg| {dg:.1e}; peak RSS growth at first call {grow[k]:.0f} MB",
              flush=True)
