"""Numbers and eager speed of the slot prototype against the current code (float64 and float32)."""
import sys
import time

import numpy as np
import torch
from common import graph_tensors, make_atoms, make_model
from slots import ef_slots, neighbour_slots

torch.set_num_threads(1)


def ef_orig(model, species, centre, neighbour, rij):
    rij = rij.detach().requires_grad_(True)
    e = model(species, centre, neighbour, rij)
    (g,) = torch.autograd.grad([e.sum()], [rij])
    return e.detach(), g


which = sys.argv[1] if len(sys.argv) > 1 else "s"
sizes = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "108,500").split(",")]
for dtn in ["float64", "float32"]:
    dt = getattr(torch, dtn)
    model = make_model(which, dt)
    for n in sizes:
        atoms = make_atoms(n, elements=tuple(model.config.elements))
        sp, c, nbv, rij = graph_tensors(model, atoms, dt)
        e0, g0 = ef_orig(model, sp, c, nbv, rij)
        slots = neighbour_slots(c, len(sp), len(c))
        e1, g1 = ef_slots(model, sp, nbv, rij, slots)
        de = (e1 - e0).abs().max().item()
        dg = (g1 - g0).abs().max().item()
        ts = {"orig": [], "slots": []}
        for rep in range(5):
            for name in (["orig", "slots"] if rep % 2 == 0 else ["slots", "orig"]):
                t0 = time.perf_counter()
                if name == "orig":
                    ef_orig(model, sp, c, nbv, rij)
                else:
                    ef_slots(model, sp, nbv, rij, neighbour_slots(c, len(sp), len(c)))
                ts[name].append(time.perf_counter() - t0)
        to, tsl = np.median(ts["orig"][1:]), np.median(ts["slots"][1:])
        print(f"{which} {dtn} n={n} M={slots.shape[1]}: max|de| {de:.2e} max|dg| {dg:.2e} | "
              f"orig {1e3*to/n:.3f} ms/atom, slots {1e3*tsl/n:.3f} ms/atom, speed-up {to/tsl:.2f}x",
              flush=True)
