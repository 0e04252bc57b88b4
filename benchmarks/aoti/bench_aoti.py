"""Side-by-side energy+forces timings (1 thread): eager (current code), TorchScript, eager slot
prototype, AOTInductor package of the slot prototype, optionally torch.compile; plus numeric
agreement with the eager model. Variants are interleaved (order alternates per repeat); the
reported time is the CPU time (process_time; the machine is shared), median of the
timed repeats (first call of each variant untimed); wall time in brackets.

    OMP_NUM_THREADS=1 python bench_aoti.py --model s --dtype float64 --sizes 108,500,2048 \
        --variants eager,script,slots,aoti [--pkg PATH] [--repeats 5]
"""
import argparse
import json
import resource
import time

import numpy as np
import torch
from common import PKG_DIR, graph_tensors, make_atoms, make_model
from slots import ef_slots, model_slots, neighbour_slots

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="s")
ap.add_argument("--dtype", default="float64")
ap.add_argument("--sizes", default="108,500,2048")
ap.add_argument("--variants", default="eager,script,slots,aoti")
ap.add_argument("--pkg", default=None)
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--write-inputs", default=None, help="dir: write the first size's inputs for C++")
a = ap.parse_args()
torch.set_num_threads(a.threads)
dt = getattr(torch, a.dtype)
model = make_model(a.model, dt)
variants = a.variants.split(",")
pkg_path = a.pkg or f"{PKG_DIR}/facet-slots-{a.model}-{a.dtype}.pt2"


def ef_orig(species, centre, neighbour, rij):
    rij = rij.detach().requires_grad_(True)
    e = model(species, centre, neighbour, rij)
    (g,) = torch.autograd.grad([e.sum()], [rij])
    return e.detach(), g


runners = {}
if "eager" in variants:
    runners["eager"] = lambda sp, c, nb, rij: ef_orig(sp, c, nb, rij)
if "script" in variants:
    import warnings
    warnings.filterwarnings("ignore")
    from facet.deploy.freeze import script_potential
    sm = script_potential(model)
    sm.chunk_edges = 0  # single pass, like the others
    runners["script"] = lambda sp, c, nb, rij: sm(sp, c, nb, rij, len(sp))
if "slots" in variants:
    runners["slots"] = lambda sp, c, nb, rij: ef_slots(model, sp, nb, rij,
                                                       neighbour_slots(c, len(sp), len(c)))
if "aoti" in variants:
    t0 = time.time()
    pkg = torch._inductor.aoti_load_package(pkg_path)
    print(f"aoti package load {time.time()-t0:.2f}s ({pkg_path})")
    runners["aoti"] = lambda sp, c, nb, rij: pkg(sp, nb, rij, neighbour_slots(c, len(sp), len(c)))
if "compile" in variants:
    # with dynamic=True, torch 2.13 traces python-float module attributes (radial.py: x.pow(p))
    # as symbolic floats and inductor fails to lower them (KeyError: 'unbacked_bindings')
    torch._dynamo.config.specialize_float = True
    cm = torch.compile(lambda sp, nb, rij, slots: model_slots(model, sp, nb, rij, slots),
                       dynamic=True)

    def run_compiled(sp, c, nb, rij):
        rij = rij.detach().requires_grad_(True)
        e = cm(sp, nb, rij, neighbour_slots(c, len(sp), len(c)))
        (g,) = torch.autograd.grad([e.sum()], [rij])
        return e.detach(), g
    runners["compile"] = run_compiled

results = []
for n in [int(s) for s in a.sizes.split(",")]:
    atoms = make_atoms(n, elements=tuple(model.config.elements))
    sp, c, nb, rij = graph_tensors(model, atoms, dt)
    if a.write_inputs and n == int(a.sizes.split(",")[0]):
        import os
        os.makedirs(a.write_inputs, exist_ok=True)
        slots = neighbour_slots(c, len(sp), len(c))
        for name, t in [("species", sp), ("neighbour", nb), ("rij", rij), ("slots", slots)]:
            t.contiguous().numpy().tofile(f"{a.write_inputs}/{name}.bin")
        with open(f"{a.write_inputs}/shape.txt", "w") as f:
            f.write(f"{len(sp)} {len(c)} {slots.shape[1]} {int(dt == torch.float64)}\n")
    ref = None
    times = {k: [] for k in runners}
    walls = {k: [] for k in runners}
    agree = {}
    for k, fn in runners.items():  # untimed first call (+ agreement)
        t0 = time.perf_counter()
        e, g = fn(sp, c, nb, rij)
        first = time.perf_counter() - t0
        if ref is None:
            ref = (e.double(), g.double(), k)
        agree[k] = {"first_call_s": first,
                    "max_abs_de": (e.double() - ref[0]).abs().max().item(),
                    "max_abs_dg": (g.double() - ref[1]).abs().max().item(),
                    "max_rel_dg": ((g.double() - ref[1]).abs().max() / ref[1].abs().max()).item(),
                    "vs": ref[2]}
    names = list(runners)
    for rep in range(a.repeats):
        for k in (names if rep % 2 == 0 else names[::-1]):
            t0, w0 = time.process_time(), time.perf_counter()
            runners[k](sp, c, nb, rij)
            times[k].append(time.process_time() - t0)
            walls[k].append(time.perf_counter() - w0)
    row = {"n": n, "edges": len(c), "dtype": a.dtype, "model": a.model,
           "ms_per_atom": {k: 1e3 * float(np.median(v)) / n for k, v in times.items()},
           "wall_ms_per_atom": {k: 1e3 * float(np.median(v)) / n for k, v in walls.items()},
           "agree": agree,
           "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    results.append(row)
    base = row["ms_per_atom"].get("eager") or next(iter(row["ms_per_atom"].values()))
    print(f"n={n} {a.dtype} {a.model}: " + ", ".join(
        f"{k} {v:.3f} ({row['wall_ms_per_atom'][k]:.3f}) ms/atom ({base / v:.2f}x)"
        for k, v in row["ms_per_atom"].items()) + "  [CPU (wall)]", flush=True)
    for k, v in agree.items():
        print(f"   {k}: max|de| {v['max_abs_de']:.2e} max|dg| {v['max_abs_dg']:.2e} "
              f"(rel {v['max_rel_dg']:.1e}) vs {v['vs']}; first call {v['first_call_s']:.2f}s")
print("JSON", json.dumps(results))
