"""Issue 15 part 4 on one GPU: latency of energy + forces at ~1000 atoms (target <= 5 ms) and
throughput at ~32000 atoms, Facet-S, in one short run.

Variants (one process, graph built once per size outside the timing, as a KOKKOS build hands it
over on the device):

- ``eager``: the eager contract (``FacetPotential``; ~2200 operators per call, each a kernel
  launch: launch-bound below ~2000 atoms, 23-31 ms measured on an H100);
- ``graph``: the neighbour-slot formulation (``Facet.energy_forces_slots``: no data-dependent
  shapes, no host synchronisation) captured once per size as a CUDA graph and replayed, so one
  call is one graph launch; the slot map is computed outside (as a runtime would, once per
  neighbour-list rebuild). On the CPU the same function runs uncaptured;
- ``aoti`` (``--aoti``): an AOTInductor package compiled on this machine for this device
  (``facet.aoti.build_package(programs="single")``; Triton kernels, minutes to compile).

CUDA-synchronised wall time, median of ``--repeats`` calls after warm-up; peak memory during the
calls; the energies and forces of every variant against ``eager`` (float64 agreement ~1e-12).

    python benchmarks/gpu_latency.py --device cuda --sizes 1000,32000 --dtypes float32,float64
    python benchmarks/gpu_latency.py --device cuda --sizes 1000 --aoti     # + compiled package
    .venv/bin/python benchmarks/gpu_latency.py --device cpu --sizes 32 --repeats 1   # CPU part
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import facet  # noqa: E402
from facet.contract import FacetPotential  # noqa: E402
from facet.tensor_product import neighbour_slots  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(dtype: torch.dtype, device: torch.device):
    torch.manual_seed(0)
    model = facet.build_model(facet.facet_s(["Cu"]), dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def graph_on(n: int, model, device: torch.device):
    """Rattled fcc Cu with about ``n`` atoms: species, centre, neighbour, rij on ``device``."""
    from ase.build import bulk

    from facet.graph import build_graph

    k = max(1, round((n / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((k, k, k))
    atoms.rattle(stdev=0.02, seed=1)
    g = build_graph(atoms, model.config.elements, model.r_max)
    dt = next(model.parameters()).dtype
    return (torch.tensor(g.species, device=device), torch.tensor(g.centre, device=device),
            torch.tensor(g.neighbour, device=device),
            torch.tensor(g.rij, dtype=dt, device=device))


class SlotGraph:
    """``energy_forces_slots`` for fixed shapes as one replayable CUDA graph (plain call on the
    CPU). Inputs are copied into static buffers; outputs are views of static buffers."""

    def __init__(self, model, species, neighbour, rij, slots, warmup: int = 2):
        self.model = model
        self.n_layers = model.num_interactions
        self.static = [species.clone(), neighbour.clone(), rij.clone(), slots.clone()]
        self.device = rij.device
        self.graph = None
        if self.device.type != "cuda":
            return
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._run()

    def _run(self):
        sp, nb, rij, slots = self.static
        return self.model.energy_forces_slots(sp, nb, rij, [slots] * self.n_layers)

    def __call__(self, species, neighbour, rij, slots):
        for buf, x in zip(self.static, (species, neighbour, rij, slots), strict=True):
            buf.copy_(x)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.out


def forces(g, centre, neighbour, n):
    f = torch.zeros(n, 3, dtype=g.dtype, device=g.device)
    return f.index_add(0, centre, g).index_add(0, neighbour, -g)


def run(args) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for dtn in args.dtypes.split(","):
        dt = getattr(torch, dtn)
        model = make_model(dt, device)
        package = None
        if args.aoti:
            from facet.aoti import AOTIPotential, build_package

            t0 = time.perf_counter()
            data = build_package(model, programs="single", device=device.type,
                                 log=lambda s: print("  " + s, flush=True))
            package = AOTIPotential(data, device, chunk_edges=0)
            print(f"aoti package built in {time.perf_counter() - t0:.0f} s", flush=True)
        for n in (int(s) for s in args.sizes.split(",")):
            sp, c, nb, rij = graph_on(n, model, device)
            n_atoms = len(sp)
            slots = neighbour_slots(c, n_atoms, len(c))
            pot = FacetPotential(model, chunk_edges=0)
            calls = {"eager": lambda sp=sp, c=c, nb=nb, rij=rij, pot=pot:
                     pot(sp, c, nb, rij, len(sp))}
            try:
                t0 = time.perf_counter()
                runner = SlotGraph(model, sp, nb, rij, slots)
                capture_s = time.perf_counter() - t0
                calls["graph"] = lambda sp=sp, nb=nb, rij=rij, slots=slots, r=runner: r(
                    sp, nb, rij, slots)
            except RuntimeError as exc:  # e.g. out of memory while capturing
                print(f"graph capture failed at {n_atoms} atoms: {exc}", flush=True)
                capture_s = float("nan")
            if package is not None:
                calls["aoti"] = lambda sp=sp, c=c, nb=nb, rij=rij, p=package: p(sp, c, nb, rij,
                                                                                len(sp))
            ref_e, ref_g = (t.detach() for t in calls["eager"]())
            row = {"device": str(device), "dtype": dtn, "n": n_atoms, "pairs": len(c),
                   "graph_capture_s": capture_s}
            if device.type == "cuda":
                row["gpu"] = torch.cuda.get_device_name(device)
            for name, fn in calls.items():
                for _ in range(args.warmup):
                    fn()
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                times = []
                for _ in range(args.repeats):
                    sync(device)
                    t0 = time.perf_counter()
                    e, g = fn()
                    f = forces(g, c, nb, n_atoms)
                    sync(device)
                    times.append(time.perf_counter() - t0)
                ms = 1e3 * statistics.median(times)
                row[f"{name}_ms"] = ms
                row[f"{name}_us_per_atom"] = 1e3 * ms / n_atoms
                if device.type == "cuda":
                    row[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated(device)
                                               - base) / 2**20
                row[f"{name}_max_dE"] = float((e - ref_e).abs().max())
                row[f"{name}_max_dg"] = float((g - ref_g).abs().max())
                del f
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="1000,32000")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--aoti", action="store_true", help="also compile and time an AOTI package")
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    rows = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
