"""One AOTI package holding several named models: the whole contract ("energy_forces") and the
per-layer entry points ("layer{k}", "layer{k}_vjp"), plus facet metadata (torch version, dtype,
device, CPU ISA) for a load-time compatibility check.

    python build_layers_pkg.py {s|emt} {float64|float32}
"""
import json
import os
import sys
import time

import torch
from common import PKG_DIR, graph_tensors, make_atoms, make_model
from layers import export_layers
from slots import ef_slots, neighbour_slots
from torch._inductor.package import package_aoti
from torch.fx.experimental.proxy_tensor import make_fx

torch.set_num_threads(1)
which, dtn = sys.argv[1], sys.argv[2]
dt = getattr(torch, dtn)
model = make_model(which, dt)
sp, c, nb, rij = graph_tensors(model, make_atoms(108, elements=tuple(model.config.elements)), dt)
slots = neighbour_slots(c, len(sp), len(c))
t0 = time.time()
eps = export_layers(model, (sp, nb, rij, slots))
gm = make_fx(lambda a, b, r, s: ef_slots(model, a, b, r, s), tracing_mode="symbolic",
             _allow_non_fake_inputs=True)(sp, nb, rij, slots)
N = torch.export.Dim("n_atoms", min=2)
E = torch.export.Dim("n_edges", min=2)
M = torch.export.Dim("max_neighbours", min=2, max=4096)
eps["energy_forces"] = torch.export.export(
    gm, (sp, nb, rij, slots), dynamic_shapes=({0: N}, {0: E}, {0: E}, {0: N, 1: M}), strict=False)
print(f"export of {len(eps)} programs: {time.time()-t0:.1f}s", flush=True)
meta = {"facet_format": "aoti-1", "torch_version": torch.__version__, "dtype": dtn,
        "device": "cpu", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_layers": str(len(model.layers)), "r_max": str(model.config.r_max),
        "elements": json.dumps(model.config.elements),
        "feature_dims": json.dumps(model.feature_dims)}
files = {}
for name, ep in eps.items():
    t0 = time.time()
    args, kwargs = ep.example_inputs
    files[name] = torch._inductor.aot_compile(
        ep.module(check_guards=False), args, kwargs,
        options={"aot_inductor.package": True, "aot_inductor.metadata": meta,
                 "aot_inductor.model_name_for_generated_files": name})
    print(f"  {name}: AOTI compile {time.time()-t0:.1f}s", flush=True)
path = f"{PKG_DIR}/facet-layers-{which}-{dtn}.pt2"
package_aoti(path, files)
print(f"package {path}: {os.path.getsize(path)/1e6:.2f} MB")
