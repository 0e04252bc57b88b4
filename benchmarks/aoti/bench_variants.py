"""AOTI packages of the restructured formulations side by side (1 thread, CPU time,
interleaved, median of --repeats) with the eager current code as the reference: ``slots``,
``slots-fold``, ``intervals-fold`` (aoti_slots_build.py --variant ...). Prints the ratio to the
FLOP limit measured in the same run (1-thread square-1024 matmul rate; model FLOPs of the
current formulation, --mflop-per-atom) and the agreement with the eager model.

    OMP_NUM_THREADS=1 python bench_variants.py --dtype float32 --sizes 108,500 \
        --variants slots,slots-fold,intervals-fold --mflop-per-atom 22.98
"""
import argparse
import time

import numpy as np
import slots as S
import torch
from common import PKG_DIR, graph_tensors, make_atoms, make_model
from flops_and_rate import rate

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="s")
ap.add_argument("--dtype", default="float32")
ap.add_argument("--sizes", default="108,500")
ap.add_argument("--variants", default="slots,slots-fold,intervals-fold")
ap.add_argument("--repeats", type=int, default=4)
ap.add_argument("--mflop-per-atom", type=float, required=True)
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
dt = getattr(torch, a.dtype)
model = make_model(a.model, dt)
pk = {v: torch._inductor.aoti_load_package(f"{PKG_DIR}/facet-{v}-{a.model}-{a.dtype}.pt2")
      for v in a.variants.split(",")}


def ef_eager(sp, c, nb, rij):
    rij = rij.detach().requires_grad_(True)
    e = model(sp, c, nb, rij)
    (g,) = torch.autograd.grad([e.sum()], [rij])
    return e.detach(), g


def runner(v, sp, c, nb, rij):
    if v == "eager":
        return ef_eager(sp, c, nb, rij)
    if v.startswith("slots"):
        return pk[v](sp, nb, rij, S.neighbour_slots(c, len(sp), len(c)))
    interval, sl = S.interval_inputs(model, c, rij, len(sp))
    return pk[v](sp, nb, rij, interval, *sl)


names = ["eager", *pk]
for n in [int(s) for s in a.sizes.split(",")]:
    args = graph_tensors(model, make_atoms(n, elements=tuple(model.config.elements)), dt)
    ref = ef_eager(*args)
    agree = {}
    for v in names:
        e, g = runner(v, *args)
        agree[v] = ((e - ref[0]).abs().max().item(), (g - ref[1]).abs().max().item())
    ts = {v: [] for v in names}
    rates = [rate((0, 1024, 1024, 1024), dt, 0.5)]
    for rep in range(a.repeats):
        for v in (names if rep % 2 == 0 else names[::-1]):
            t0 = time.process_time()
            runner(v, *args)
            ts[v].append(time.process_time() - t0)
        rates.append(rate((0, 1024, 1024, 1024), dt, 0.5))
    gf = float(np.median(rates))
    limit = a.mflop_per_atom * 1e6 / (gf * 1e9) * 1e3
    base = np.median(ts["eager"])
    print(f"n={n} {a.dtype} {a.threads} thread(s): matmul {gf:.1f} GFLOP/s, limit {limit:.3f} "
          f"ms/atom at {a.mflop_per_atom} MFLOP/atom")
    for v in names:
        t = np.median(ts[v])
        print(f"   {v:15s} {1e3 * t / n:.3f} CPU ms/atom ({base / t:.2f}x eager) = "
              f"{1e3 * t / n / limit:.2f}x limit; max|de| {agree[v][0]:.1e} "
              f"max|dg| {agree[v][1]:.1e}", flush=True)
