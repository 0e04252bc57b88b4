"""Where the time of one Facet-S energy+forces evaluation goes (CPU), to guide optimisation.

Three views of the same evaluation (rattled fcc Cu, weights perturbed off the ReZero start, as in
bench_worker.py), all on the same machine in one run:

1. phases, by wall clock (median of --repeats calls): neighbour list + graph (vesin), tensor
   set-up, model forward, autograd backward (dE/dr_ij), forces/virial scatter;
2. per model part, forward and backward: torch.profiler with a record_function range around every
   submodule's forward; backward autograd nodes are attributed to the part whose forward op
   created them (same sequence number), so "backward" of a part is the gradient of that part;
3. the top aten operators by self CPU time (forward and backward together).

    .venv/bin/python benchmarks/profile_facet.py                 # 500 atoms, float64, 1 thread
    .venv/bin/python benchmarks/profile_facet.py --size 108 --dtype float32 --threads 2
    .venv/bin/python benchmarks/profile_facet.py --facet-commit HEAD   # committed code only

Output: tables on stdout; JSON in benchmarks/results/ (and a Chrome trace with --trace).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import datetime as _dt
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import torch
from torch.autograd.profiler import record_function

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_worker import make_cu, proc_status_mb, reset_peak_rss  # noqa: E402

facet = None  # imported in main(), after --facet-commit has chosen the source
build_graph = None

PREFIX = "facet-range::"  # not "facet::": the fused kernels are operators of that namespace


# ------------------------------------------------------------------------------ part names
def part_of(qualname: str, module: torch.nn.Module) -> str:
    """Part name of a submodule: layer index, path inside the layer, class, e.g.
    'L1 interaction.tp [UVUTensorProduct]'. Its time is the module's *exclusive* time: ops of
    its own forward that are not inside a child module."""
    if "_compiled_main" in qualname:  # e3nn's generated fx module: counted in its parent
        return ""
    cls = type(module).__name__
    m = re.match(r"layers\.(\d+)\.?(.*)", qualname)
    if m:
        path = m.group(2) or "(layer itself: residual pad, gain)"
        return f"L{m.group(1)} {path} [{cls}]"
    return f"{qualname or '(model itself: embedding, readout)'} [{cls}]"


def category(part: str) -> str:
    """Part -> component summed over layers (drops the layer index)."""
    return re.sub(r"^L\d+ ", "", part)


def attach_ranges(model: torch.nn.Module) -> list:
    """A record_function range (named PREFIX + part) around every submodule's forward."""
    handles = []
    stack: list = []

    def pre(name):
        def hook(mod, inp):
            rf = record_function(PREFIX + name)
            rf.__enter__()
            stack.append(rf)

        return hook

    def post(mod, inp, out):
        stack.pop().__exit__(None, None, None)

    for qualname, mod in model.named_modules():
        name = part_of(qualname, mod)
        if not name:  # e3nn's generated submodule: counted in its parent
            continue
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post))
    return handles


# ------------------------------------------------------------------------------ evaluation
def make_model(dtype: torch.dtype, seed: int):
    torch.manual_seed(seed)
    model = facet.build_model(facet.facet_s(["Cu"]), dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for p in model.parameters():  # inference, as the calculator and the frozen module run it
        p.requires_grad_(False)
    return model.eval()


def evaluate(model, atoms, dtype, timer: dict | None = None, mem: dict | None = None):
    """The FacetCalculator's steps (build_graph, contract forward + autograd, scatter), timed;
    ``mem`` gets the RSS growth (MB) kept after the forward pass (tensors saved for backward)
    and the peak growth up to the end of the backward pass."""
    if mem is not None:
        reset_peak_rss()
        rss0 = proc_status_mb()["VmRSS"]
    t = [time.perf_counter()]

    def tick(name):
        now = time.perf_counter()
        if timer is not None:
            timer[name].append(now - t[0])
        t[0] = now

    cfg = model.config
    with record_function(PREFIX + "phase: neighbour list"):
        graph = build_graph(atoms, cfg.elements, cfg.r_max, cfg.min_distance)
        rij_np = graph.rij
    tick("neighbour list + graph (vesin, numpy)")
    species = torch.as_tensor(graph.species)
    centre = torch.as_tensor(graph.centre)
    neighbour = torch.as_tensor(graph.neighbour)
    rij = torch.as_tensor(rij_np, dtype=dtype).requires_grad_(True)
    tick("tensor set-up")
    with record_function(PREFIX + "phase: forward"):
        e = model(species, centre, neighbour, rij)
        total = e.sum()
    tick("model forward")
    if mem is not None:
        st = proc_status_mb()
        mem["after forward"].append(st["VmRSS"] - rss0)
        mem["peak in forward"].append(st["VmHWM"] - rss0)
    with record_function(PREFIX + "phase: backward"):
        (g,) = torch.autograd.grad([total], [rij])
    tick("autograd backward (dE/dr_ij)")
    if mem is not None:
        mem["peak up to end of backward"].append(proc_status_mb()["VmHWM"] - rss0)
    g = g.detach().to(torch.float64)
    n = graph.num_atoms
    forces = torch.zeros(n, 3, dtype=torch.float64)
    forces.index_add_(0, centre, g).index_add_(0, neighbour, -g)
    virial = rij.detach().to(torch.float64).T @ g
    tick("forces + virial scatter")
    return float(total.detach()), forces, virial, len(centre)


def attribute(prof) -> tuple[dict, dict, dict]:
    """Self CPU time (us) per part, forward and backward, and the memory (bytes) each part's
    forward allocated and did not free (its outputs and what autograd saved for backward),
    from the profiler's event tree."""
    events = prof.events()
    fwd = collections.Counter()
    bwd = collections.Counter()
    fwd_mem = collections.Counter()
    seq_part: dict[int, str] = {}

    def enclosing(ev) -> str | None:
        p = ev.cpu_parent
        while p is not None:
            if p.name.startswith(PREFIX) and not p.name.startswith(PREFIX + "phase"):
                return p.name[len(PREFIX):]
            p = p.cpu_parent
        return None

    # forward: every aten op's self time goes to its innermost range; remember its sequence nr
    for ev in events:
        if ev.name.startswith(PREFIX) or ev.name.startswith("autograd::engine"):
            continue
        part = enclosing(ev)
        if part is None:
            continue
        fwd[part] += ev.self_cpu_time_total
        fwd_mem[part] += ev.self_cpu_memory_usage
        if ev.sequence_nr >= 0:
            seq_part.setdefault(ev.sequence_nr, part)
    # backward: an engine node "autograd::engine::evaluate_function: XBackward0" and all its
    # children belong to the part whose forward op has the same sequence number
    for ev in events:
        if not ev.name.startswith("autograd::engine::evaluate_function"):
            continue
        part = seq_part.get(ev.sequence_nr, "(unattributed backward)")
        bwd[part] += ev.cpu_time_total
    return dict(fwd), dict(bwd), dict(fwd_mem)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls for the phase table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--trace", action="store_true", help="also write a Chrome trace")
    ap.add_argument("--no-fused", action="store_true",
                    help="torch code instead of facet.ops' fused CPU kernels (the default, as in "
                         "FacetCalculator)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--facet-commit", default=None, metavar="REV",
                    help="profile facet/ as of this git revision instead of the working tree")
    args = ap.parse_args()

    global facet, build_graph
    source = "working tree"
    if args.facet_commit:
        from bench_model import facet_snapshot

        src, commit = facet_snapshot(args.facet_commit)
        sys.path.insert(0, src)
        atexit.register(shutil.rmtree, src, True)
        source = f"git {commit}"
    import facet as _facet
    import facet.ops  # noqa: F401
    from facet.graph import build_graph as _build_graph

    facet, build_graph = _facet, _build_graph

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = make_model(dtype, args.seed)
    fused = facet.ops.wanted(False if args.no_fused else None)
    facet.ops.use_fused(model, fused)
    atoms = make_cu(args.size, args.seed)
    lines = []
    p = lines.append
    p(f"command: python benchmarks/profile_facet.py {' '.join(sys.argv[1:])}")
    p(f"Facet code: {source}")
    p(f"Facet-S ({facet.count_parameters(model)} params), {len(atoms)} atoms fcc Cu, "
      f"{args.dtype}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
      f"{'fused kernels' if fused else 'torch code (no fused kernels)'}")

    # 1. phases (no profiler, no hooks)
    evaluate(model, make_cu(32, args.seed), dtype)  # warm-up: code generation etc.
    evaluate(model, atoms, dtype)
    timer: dict = collections.defaultdict(list)
    mem: dict = collections.defaultdict(list)
    for _ in range(args.repeats):
        _, _, _, n_edges = evaluate(model, atoms, dtype, timer, mem)
    med = {k: float(np.median(v)) for k, v in timer.items()}
    tot = sum(med.values())
    p(f"{n_edges} edges ({n_edges / len(atoms):.0f}/atom)")
    p("")
    p(f"1. Phases (median of {args.repeats} calls, wall clock): total {tot:.3f} s = "
      f"{1e3 * tot / len(atoms):.2f} ms/atom")
    p("| phase | s | % |")
    p("|---|---:|---:|")
    for k, v in med.items():
        p(f"| {k} | {v:.3f} | {100 * v / tot:.1f} |")
    p("")
    p("   memory (RSS growth over the start of the call, max over calls): " + ", ".join(
        f"{k} {max(v):.0f} MB ({1024 * max(v) / len(atoms):.0f} KB/atom)" for k, v in mem.items()))

    # 2. + 3. one profiled call
    handles = attach_ranges(model)
    evaluate(model, atoms, dtype)  # warm the hooks
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False,
                 profile_memory=True) as prof:
        evaluate(model, atoms, dtype)
    for h in handles:
        h.remove()
    fwd, bwd, fwd_mem = attribute(prof)
    phase = {ev.key: ev.cpu_time_total for ev in prof.key_averages()
             if ev.key.startswith(PREFIX + "phase")}
    prof_total = sum(phase.values())
    cats_f: collections.Counter = collections.Counter()
    cats_b: collections.Counter = collections.Counter()
    cats_m: collections.Counter = collections.Counter()
    for k, v in fwd_mem.items():
        cats_m[category(k)] += v
    for k, v in fwd.items():
        cats_f[category(k)] += v
    for k, v in bwd.items():
        cats_b[category(k)] += v
    p("")
    p("2. By model component (module path inside a layer [class]), summed over the layers; "
      "exclusive times (a container's row has only its own ops, not its children's); backward = "
      "gradient of that component (profiled call; % of the profiled total incl. neighbour list: "
      f"{prof_total / 1e6:.3f} s)")
    p("   (kept MB: memory the component's forward allocated and did not free: its outputs "
      "and the tensors autograd saved for the backward pass)")
    p("| component | forward ms | backward ms | total ms | % | kept MB |")
    p("|---|---:|---:|---:|---:|---:|")
    comps = sorted(set(cats_f) | set(cats_b), key=lambda c: -(cats_f[c] + cats_b[c]))
    for c in comps:
        t = cats_f[c] + cats_b[c]
        p(f"| {c} | {cats_f[c] / 1e3:.0f} | {cats_b[c] / 1e3:.0f} | {t / 1e3:.0f} | "
          f"{100 * t / prof_total:.1f} | {cats_m[c] / 2**20:.0f} |")
    nl = phase.get(PREFIX + "phase: neighbour list", 0.0)
    p(f"| neighbour list + graph (vesin) | {nl / 1e3:.0f} | – | {nl / 1e3:.0f} | "
      f"{100 * nl / prof_total:.1f} | – |")
    p("")
    p("   per layer and part (forward + backward ms):")
    p("| part | forward ms | backward ms | kept MB |")
    p("|---|---:|---:|---:|")
    parts = sorted(set(fwd) | set(bwd), key=lambda k: -(fwd.get(k, 0) + bwd.get(k, 0)))
    for k in parts[: args.top]:
        p(f"| {k} | {fwd.get(k, 0) / 1e3:.0f} | {bwd.get(k, 0) / 1e3:.0f} | "
          f"{fwd_mem.get(k, 0) / 2**20:.0f} |")

    p("")
    p(f"3. Top {args.top} operators by self CPU time (forward + backward)")
    p("| operator | self ms | % | calls |")
    p("|---|---:|---:|---:|")
    ka = [e for e in prof.key_averages() if not e.key.startswith(PREFIX)]
    ka.sort(key=lambda e: -e.self_cpu_time_total)
    self_total = sum(e.self_cpu_time_total for e in ka)
    for e in ka[: args.top]:
        p(f"| {e.key} | {e.self_cpu_time_total / 1e3:.0f} | "
          f"{100 * e.self_cpu_time_total / self_total:.1f} | {e.count} |")
    text = "\n".join(lines)
    print(text, flush=True)

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"profile-{args.size}-{args.dtype}-{stamp}.json"
    out = args.out or os.path.join(HERE, "results", name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"args": vars(args), "phases_s": med, "memory_mb": dict(mem),
                   "forward_us": fwd, "backward_us": bwd, "forward_kept_bytes": fwd_mem,
                   "components_forward_us": dict(cats_f), "components_backward_us": dict(cats_b),
                   "table": text}, fh, indent=1)
    if args.trace:
        prof.export_chrome_trace(out.replace(".json", ".trace.json"))
    print(f"saved {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
