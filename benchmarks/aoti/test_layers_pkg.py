"""Load the multi-model AOTI package (energy_forces + per-layer fwd/vjp), check its metadata
(the compatibility check a runtime would do), and compare the per-layer chain (KOKKOS-like
driver: embed -> layer k ... -> readout, then vjp layers in reverse) and the whole-contract
model with the eager model, float64."""
import json
import sys
import time

import torch
from common import PKG_DIR, graph_tensors, make_atoms, make_model
from slots import ef_slots, neighbour_slots
from torch._inductor.package import load_package

torch.set_num_threads(1)
which, dtn = sys.argv[1], sys.argv[2]
path = f"{PKG_DIR}/facet-layers-{which}-{dtn}.pt2"
dt = getattr(torch, dtn)
model = make_model(which, dt)
L = len(model.layers)
fns = {name: load_package(path, name) for name in
       ["energy_forces"] + [f"layer{k}{s}" for k in range(L) for s in ("", "_vjp")]}
meta = fns["energy_forces"].get_metadata()
print("metadata:", {k: v for k, v in meta.items() if not k.startswith("AOTI_")},
      {k: v for k, v in meta.items() if k.startswith("AOTI_")})


def check_compatible(meta, dtype, device="cpu"):
    """What a runtime should check before the first call (clear error instead of a crash)."""
    problems = []
    if meta.get("torch_version", "").split("+")[0] != torch.__version__.split("+")[0]:
        problems.append(f"compiled with torch {meta.get('torch_version')}, running "
                        f"{torch.__version__}")
    if meta.get("AOTI_DEVICE_KEY") != device:
        problems.append(f"compiled for {meta.get('AOTI_DEVICE_KEY')}, requested {device}")
    if meta.get("dtype") != dtype:
        problems.append(f"compiled for {meta.get('dtype')}, requested {dtype}")
    cap = torch.backends.cpu.get_cpu_capability()
    need = meta.get("AOTI_CPU_ISA", "")
    if device == "cpu" and "AVX512" in need and cap not in ("AVX512",):
        problems.append(f"compiled for CPU ISA {need}; this CPU supports {cap}")
    return problems


print("compatible:", check_compatible(meta, dtn) or "yes")
print("as if loaded on cuda/float32:", check_compatible(meta, "float32", "cuda"))
for n in [108, 500]:
    sp, c, nb, rij = graph_tensors(model, make_atoms(n, elements=tuple(model.config.elements)), dt)
    slots = neighbour_slots(c, len(sp), len(c))
    e_ref, g_ref = ef_slots(model, sp, nb, rij, slots)

    def chain(sp, nb, rij, slots):
        hs = [model.embed(sp)]
        for k in range(L):
            hs.append(fns[f"layer{k}"](hs[k], nb, rij, slots))
        h_last = hs[-1].requires_grad_(True)
        e = model.readout(h_last, sp)
        (g,) = torch.autograd.grad([e.sum()], [h_last])
        g_rij = torch.zeros_like(rij)
        for k in range(L - 1, -1, -1):
            g, gr = fns[f"layer{k}_vjp"](hs[k], nb, rij, slots, g)
            g_rij += gr
        return e.detach(), g_rij

    def whole(sp, nb, rij, slots):
        return fns["energy_forces"](sp, nb, rij, slots)

    for name, f in [("per-layer chain", chain), ("energy_forces", whole)]:
        e, g = f(sp, nb, rij, slots)
        ts = []
        for _ in range(3):
            t0 = time.process_time()
            f(sp, nb, rij, slots)
            ts.append(time.process_time() - t0)
        print(f"n={n} {name}: max|de| {(e - e_ref).abs().max().item():.1e} max|dg| "
              f"{(g - g_ref).abs().max().item():.1e}; {1e3 * sorted(ts)[1] / n:.3f} CPU ms/atom")
    print(json.dumps({"n": n}))
