"""Model FLOPs per atom (torch.profiler with_flops: mm/bmm/addmm/matmul only) of one eager
energy+forces single pass, and this machine's 1-thread matmul rate (float32/float64) for
representative shapes. Prints a JSON line.

    python flops_and_rate.py [s|emt] [n_atoms]
"""
import json
import sys
import time

import numpy as np
import torch
from common import graph_tensors, make_atoms, make_model
from slots import ef_slots, neighbour_slots
from torch.profiler import ProfilerActivity, profile

torch.set_num_threads(1)


def ef_orig(model, species, centre, neighbour, rij):
    rij = rij.detach().requires_grad_(True)
    e = model(species, centre, neighbour, rij)
    (g,) = torch.autograd.grad([e.sum()], [rij])
    return e.detach(), g


def model_flops(which, n, dt, variant):
    model = make_model(which, dt)
    atoms = make_atoms(n, elements=tuple(model.config.elements))
    sp, c, nbv, rij = graph_tensors(model, atoms, dt)
    if variant == "orig":
        def fn():
            return ef_orig(model, sp, c, nbv, rij)
    else:
        def fn():
            return ef_slots(model, sp, nbv, rij, neighbour_slots(c, len(sp), len(c)))
    fn()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    by_op = {}
    for ev in prof.key_averages():
        if ev.flops:
            by_op[ev.key] = by_op.get(ev.key, 0) + ev.flops
    return {k: v / n for k, v in by_op.items()}, sum(by_op.values()) / n


def rate(shape, dt, seconds=1.0):
    """GFLOP/s of one matmul shape: (b, m, k, n) -> bmm, b=0 -> mm."""
    b, m, k, n = shape
    if b:
        x, y = torch.randn(b, m, k, dtype=dt), torch.randn(b, k, n, dtype=dt)
        def f():
            return torch.bmm(x, y)
        fl = 2.0 * b * m * k * n
    else:
        x, y = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
        def f():
            return x @ y
        fl = 2.0 * m * k * n
    f()
    reps = max(3, int(seconds * 50e9 / fl))
    ts = []
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(max(1, reps // 5)):
            f()
        ts.append((time.process_time() - t0) / max(1, reps // 5))
    return fl / np.median(ts) / 1e9


SHAPES = {
    "square 512": (0, 512, 512, 512),
    "square 1024": (0, 1024, 1024, 1024),
    "TP L1 blk1 fwd bmm [108x(96x126)@(126x64)]": (108, 96, 126, 64),
    "TP L1 blk2 fwd bmm [108x(112x210)@(210x32)]": (108, 112, 210, 32),
    "S2 MLP in [66096x32]@[32x16]": (0, 66096, 32, 16),
    "S2 MLP out [66096x16]@[16x32]": (0, 66096, 16, 32),
}

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "s"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 108
    out = {"model": which, "n": n}
    for dtn in ["float32", "float64"]:
        dt = getattr(torch, dtn)
        for variant in ["orig", "slots"]:
            ops, tot = model_flops(which, n, dt, variant)
            out[f"mflop_per_atom_{variant}_{dtn}"] = tot / 1e6
            out[f"mflop_by_op_{variant}_{dtn}"] = {k: v / 1e6 for k, v in ops.items()}
        out[f"gflops_{dtn}"] = {k: rate(s, dt) for k, s in SHAPES.items()}
    print(json.dumps(out, indent=1))
