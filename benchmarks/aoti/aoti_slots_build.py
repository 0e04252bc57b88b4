"""Export energy + dE/drij of the slot formulation (make_fx of autograd.grad -> torch.export,
dynamic n_atoms, n_edges, max_neighbours) and compile it with AOTInductor into a package.

    python aoti_slots_build.py {s|emt} {float64|float32} [--variant slots|slots-fold|
        intervals|intervals-fold] [--out DIR] [--max-autotune]

Package inputs: ``slots``: (species, neighbour, rij, slots); ``intervals``: (species, neighbour,
rij, interval, slots_0, ..., slots_{J-1}) with J = num_basis - 3 (slots.interval_inputs).
``-fold``: the S2 block's first MLP layer folded before the grid transform (slots.s2_folded).
"""
import argparse
import os
import time

import slots as S
import torch
from common import PKG_DIR, graph_tensors, make_atoms, make_model
from torch.fx.experimental.proxy_tensor import make_fx

ap = argparse.ArgumentParser()
ap.add_argument("model", choices=["s", "emt"])
ap.add_argument("dtype", choices=["float64", "float32"])
ap.add_argument("--out", default=PKG_DIR)
ap.add_argument("--max-autotune", action="store_true")
ap.add_argument("--tag", default="")
ap.add_argument("--variant", default="slots",
                choices=["slots", "slots-fold", "intervals", "intervals-fold"])
a = ap.parse_args()
torch.set_num_threads(1)
dt = getattr(torch, a.dtype)
model = make_model(a.model, dt)
atoms = make_atoms(108, elements=tuple(model.config.elements))
sp, c, nbv, rij = graph_tensors(model, atoms, dt)
S.FOLD_S2 = a.variant.endswith("-fold")
N = torch.export.Dim("n_atoms", min=2, max=1 << 24)
E = torch.export.Dim("n_edges", min=2, max=1 << 28)
if a.variant.startswith("slots"):
    inputs = (sp, nbv, rij, S.neighbour_slots(c, len(sp), len(c)))

    def ef(species, neighbour, rij, slots):
        return S.ef_slots(model, species, neighbour, rij, slots)

    M = torch.export.Dim("max_neighbours", min=2, max=4096)
    ds = ({0: N}, {0: E}, {0: E}, {0: N, 1: M})
else:
    interval, slot_list = S.interval_inputs(model, c, rij, len(sp))
    inputs = (sp, nbv, rij, interval, *slot_list)

    def ef(species, neighbour, rij, interval, *slot_list):
        return S.ef_intervals(model, species, neighbour, rij, interval, list(slot_list))

    Ms = [torch.export.Dim(f"m{j}", min=2, max=4096) for j in range(len(slot_list))]
    ds = ({0: N}, {0: E}, {0: E}, {0: E}, *[{0: N, 1: m} for m in Ms])
t0 = time.time()
gm = make_fx(ef, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
t1 = time.time()
ep = torch.export.export(gm, inputs, dynamic_shapes=ds, strict=False)
t2 = time.time()
tag = f"{a.variant}-{a.model}-{a.dtype}{a.tag}"
os.makedirs(a.out, exist_ok=True)
torch.export.save(ep, f"{a.out}/ep-{tag}.pt2")
print(f"{tag}: make_fx {t1-t0:.1f}s, export {t2-t1:.1f}s, {len(ep.graph.nodes)} nodes", flush=True)
opts = {}
if a.max_autotune:
    opts = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
path = f"{a.out}/facet-{tag}.pt2"
t0 = time.time()
torch._inductor.aoti_compile_and_package(ep, package_path=path, inductor_configs=opts)
t3 = time.time()
print(f"{tag}: AOTI compile+package {t3-t0:.1f}s, package {os.path.getsize(path)/1e6:.2f} MB",
      flush=True)
