"""Top aten ops (self CPU time) of one eager energy+forces pass: current code vs slot prototype."""
import sys

import torch
from common import graph_tensors, make_atoms, make_model
from slots import ef_slots, neighbour_slots
from torch.profiler import ProfilerActivity, profile

torch.set_num_threads(1)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 108
dt = getattr(torch, sys.argv[2] if len(sys.argv) > 2 else "float32")
model = make_model("s", dt)
sp, c, nb, rij = graph_tensors(model, make_atoms(n), dt)


def ef_orig():
    r = rij.detach().requires_grad_(True)
    e = model(sp, c, nb, r)
    return torch.autograd.grad([e.sum()], [r])


def slots():
    return ef_slots(model, sp, nb, rij, neighbour_slots(c, len(sp), len(c)))


for name, fn in [("orig", ef_orig), ("slots", slots)]:
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    n_ops = sum(e.count for e in ka if e.key.startswith("aten::"))
    print(f"== {name}: total self {total/1e3:.1f} ms, aten op calls {n_ops}")
    for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[:14]:
        share = 100 * e.self_cpu_time_total / total
        print(f"  {e.key:55s} {e.self_cpu_time_total/1e3:7.1f} ms {share:5.1f}% {e.count:5d}")
