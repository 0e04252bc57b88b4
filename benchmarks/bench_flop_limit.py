"""Facet-S against the FLOP limit of this CPU (issue 15), in one run.

Measures, in the same process and interleaved:

1. the model's FLOPs per atom: ``torch.profiler`` (``with_flops``: mm, bmm, addmm, matmul) of one
   eager single-pass energy + forces at 108 atoms (Facet-S: the dense tensor-product bmm, the S2
   transforms and grid MLP, the linear layers);
2. this machine's 1-thread matmul rate: square 1024 (the limit's denominator) and the model's own
   shapes (TP bmm per node, S2 grid MLP), re-measured between the timed sizes;
3. the CPU time per atom (``time.process_time``) of energy + forces through the default
   ``FacetCalculator`` (eager; recomputing evaluation above 16384 pairs) and the AOTInductor
   backend (``FacetCalculator(package)``: single pass up to 16384 pairs, the per-layer programs
   in chunks above), rattled fcc Cu at 108 / 500 / 2048 / 8000 atoms, variants alternating;
   variant ``lammps``: LAMMPS' time per MD step (``lmp``, 1 rank, 1 thread, NVE at 300 K from
   the same atoms, neighbour skin 2 Å: LAMMPS' "Loop time" / steps after a warm-up run) with
   the native plugin (``pair_style facet``) on a file of the same model deployed in the run's
   dtype (``facet-deploy --format plugin``; needs ``./setup.sh``'s LAMMPS and
   ``deploy/build_plugin.sh``); its energy is LAMMPS' step-0 potential energy;
4. the ratio of each time to the FLOP limit ``MFLOP/atom / square-1024 rate``;
5. with ``--threads 1,2``: the same timings with 2 threads (wall time; the packages are compiled
   with the caller's thread count, ``facet-deploy --threads 0``).

Packages are built once per dtype into ``--package-dir`` (Facet-S: ~10-20 CPU-minutes each for all
programs, a few for ``--aoti-programs single``) and reused. Results: a table on stdout and a JSON
line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_flop_limit.py --dtype float32
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_flop_limit.py --dtype float64 \
        --sizes 108,500,2048,8000 --threads 1,2
    ... --model shipped     # the shipped model's config (random weights) instead of Facet-S
    ... --variants default,lammps --sizes 108,500   # the calculator and LAMMPS, one limit
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import facet  # noqa: E402
from facet.calculator import FacetCalculator  # noqa: E402

SHIPPED_CONFIG = os.path.join(ROOT, "examples", "models", "facet-emt-small.json")


def make_model(which: str, dtype: torch.dtype, seed: int = 0):
    """Facet-S (or the shipped config) for Cu with every weight perturbed (random, not inert)."""
    if which == "s":
        cfg = facet.facet_s(["Cu"])
    else:
        with open(SHIPPED_CONFIG) as f:
            cfg = facet.FacetConfig(elements=["Cu"], **json.load(f))
    torch.manual_seed(seed)
    model = facet.build_model(cfg, dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def make_atoms(n: int, seed: int = 1):
    from ase.build import bulk

    if n == 8000:
        rep = (10, 10, 20)
    else:
        k = next(k for k in range(1, 40) if 4 * k**3 >= n)
        rep = (k, k, k)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
    atoms.rattle(stdev=0.02, seed=seed)
    return atoms


class LammpsPlugin:
    """Variant ``lammps``: MD steps in LAMMPS with the native plugin on a file of ``model``
    deployed in ``dtype``. ``calculate`` runs one ``lmp`` process (warm-up run, then the timed
    run) and sets ``step_seconds`` (LAMMPS' loop time per step) and ``results["energy"]``
    (the potential energy at step 0, eV); forces are not compared (``results["forces"]`` NaN)."""

    def __init__(self, model, dtype: str, work: str) -> None:
        sys.path.insert(0, HERE)
        import bench_plugin

        from facet.cli.deploy import main as deploy_main
        from facet.lammps.plugin import plugin_library

        self.bp = bench_plugin
        self.lib = plugin_library()
        if self.lib is None:
            raise SystemExit("variant lammps: no plugin built (bash deploy/build_plugin.sh)")
        self.work = work
        ckpt = facet.save_model(model, os.path.join(work, "model.pt"))
        self.file = os.path.join(work, f"model-{dtype}-plugin.pt")
        with open(os.devnull, "w") as null:
            out, sys.stdout = sys.stdout, null
            try:
                assert deploy_main([str(ckpt), "--format", "plugin", "--dtype", dtype, "-o",
                                    self.file]) == 0
            finally:
                sys.stdout = out
        self.model = {"plugin": self.file, "mliap": self.file, "r_max": model.r_max,
                      "layers": model.num_interactions}
        self.results: dict = {}
        self.step_seconds = float("nan")
        self.potential = None

    def calculate(self, atoms, properties=None) -> None:
        import re
        from pathlib import Path

        from ase.io.lammpsdata import write_lammps_data

        n = len(atoms)
        data = Path(self.work) / f"atoms{n}.data"
        if not data.exists():
            write_lammps_data(data, atoms, specorder=["Cu"], masses=True, units="metal",
                              atom_style="atomic")
        steps = max(3, 3000 // n)
        deck = self.bp.deck("plugin", self.model, data, 2, steps, self.lib)
        deck = deck.replace("thermo 100", "thermo_style custom step pe\nthermo_modify "
                            "format float %.10f\nthermo 100")
        text = self.bp.run_lmp(deck, f"flop-{n}", Path(self.work))
        self.step_seconds = self.bp.loop_seconds(text)
        pe = re.search(r"^\s*Step\s+PotEng\s*\n\s*0\s+(\S+)", text, re.M)
        self.results = {"energy": float(pe.group(1)) if pe else float("nan"),
                        "forces": np.full((n, 3), np.nan)}


def model_flops(model, n: int = 108) -> tuple[float, dict[str, float]]:
    """MFLOP per atom of one eager single-pass energy + forces (profiler with_flops)."""
    from torch.profiler import ProfilerActivity, profile

    from facet.contract import FacetPotential
    from facet.graph import build_graph

    atoms = make_atoms(n)
    g = build_graph(atoms, model.config.elements, model.r_max)
    dt = next(model.parameters()).dtype
    args = (torch.tensor(g.species), torch.tensor(g.centre), torch.tensor(g.neighbour),
            torch.tensor(g.rij, dtype=dt), len(atoms))
    pot = FacetPotential(model, chunk_edges=0)
    pot(*args)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        pot(*args)
    by_op: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.flops:
            by_op[ev.key] = by_op.get(ev.key, 0.0) + ev.flops / len(atoms) / 1e6
    return sum(by_op.values()), by_op


def matmul_rate(shape: tuple[int, int, int, int], dtype: torch.dtype, seconds: float = 0.3
                ) -> float:
    """1-thread-or-current GFLOP/s (CPU time) of ``(b, m, k, n)``: bmm, or mm for b = 0."""
    b, m, k, n = shape
    if b:
        x, y = torch.randn(b, m, k, dtype=dtype), torch.randn(b, k, n, dtype=dtype)
        flops = 2.0 * b * m * k * n

        def f():
            return torch.bmm(x, y)
    else:
        x, y = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        flops = 2.0 * m * k * n

        def f():
            return x @ y
    f()
    reps = max(2, int(seconds * 40e9 / flops))
    times = []
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(reps):
            f()
        times.append((time.process_time() - t0) / reps)
    return flops / float(np.median(times)) / 1e9


def model_shapes(model) -> dict[str, tuple[int, int, int, int]]:
    """Representative matmul shapes of the model at 108 atoms (b, m, k, n)."""
    layer = model.layers[0]
    tp = layer.interaction.tp
    nb = layer.interaction.radial.coefficients.shape[0]
    shapes = {}
    m_slots = 80  # neighbour slots per atom of fcc Cu at r_max 5 Å (78 neighbours)
    for _start, mul, d1, k_total, *_ in tp.blocks[:2]:
        shapes[f"TP bmm 108x({nb * k_total}x{m_slots * d1})@({m_slots * d1}x{mul})"] = (
            108, nb * k_total, m_slots * d1, mul)
    mix = layer.mix
    if hasattr(mix, "to_grid"):
        dim, n_grid = mix.to_grid.shape
        hidden = mix.mlp.weight(0).shape[1]
        hd = mix.channels // mix.heads
        rows = 108 * n_grid
        shapes[f"S2 grid MLP [{rows}x{hidden}]@[{hidden}x{hd}]"] = (0, rows, hidden, hd)
        shapes[f"S2 transform [{n_grid}x{dim}]@[{dim}x{108 * mix.heads * hidden}]"] = (
            0, n_grid, dim, 108 * mix.heads * hidden)
    return shapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="s", choices=["s", "shipped"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--sizes", default="108,500,2048,8000")
    ap.add_argument("--variants", default="default,aoti",
                    help="default (eager FacetCalculator), aoti, aoti-single (AOTI single pass "
                         "at every size), default-single, lammps (MD steps in LAMMPS with the "
                         "native plugin; see above); a -bmm suffix (default-bmm, "
                         "aoti-bmm, aoti-single-bmm) evaluates the tensor products as batched "
                         "matmuls instead of facet.ops' fused kernels")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--package-dir", default=os.path.join(HERE, "results", "aoti"))
    ap.add_argument("--package", default=None, help="use this .pt2 (must match model/dtype)")
    ap.add_argument("--aoti-programs", default="all", choices=["all", "single"],
                    help="programs to compile: all (single pass up to 16384 pairs, per-layer "
                         "chunks above) or single (energy_forces only: single pass at every "
                         "size; one program, a few CPU-minutes to compile)")
    ap.add_argument("--aoti-threads", type=int, default=1,
                    help="the package's CPU kernels: 1 (default: serial code, no OpenMP; "
                         "20-30 %% less CPU time per call than 0 at 1 thread, measured) or 0 (the "
                         "caller's thread count at run time, for --threads 2)")
    a = ap.parse_args()
    dt = getattr(torch, a.dtype)
    threads = [int(t) for t in a.threads.split(",")]
    torch.set_num_threads(1)
    model = make_model(a.model, dt)
    mflop, by_op = model_flops(model)
    print(f"model {a.model} {a.dtype}: {mflop:.2f} MFLOP/atom (energy + forces) "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_op.items())), flush=True)
    variants = a.variants.split(",")
    calcs = {}
    paths = {}
    for fused in sorted({not v.endswith("-bmm") for v in variants if v.startswith("aoti")}):
        from facet.aoti import build_package

        kind = "fused" if fused else "bmm"
        path = a.package or os.path.join(
            a.package_dir,
            f"facet-{a.model}-{a.dtype}-{a.aoti_programs}-t{a.aoti_threads}-{kind}.pt2")
        paths[fused] = path
        if not os.path.exists(path):
            t0, c0 = time.perf_counter(), time.process_time()
            build_package(model, path, programs=a.aoti_programs, threads=a.aoti_threads,
                          fused=fused, log=lambda s: print("  " + s, flush=True))
            print(f"built {path}: {time.perf_counter() - t0:.0f} s wall, "
                  f"{time.process_time() - c0:.0f} s CPU in this process (+ the compiler's)",
                  flush=True)
    for v in variants:
        fused = not v.endswith("-bmm")
        base = v.removesuffix("-bmm")
        if base == "default":
            calcs[v] = FacetCalculator(model, dtype=a.dtype, fused=fused)
        elif base == "default-single":
            calcs[v] = FacetCalculator(model, dtype=a.dtype, chunk_edges=0, fused=fused)
        elif base == "aoti":
            calcs[v] = FacetCalculator(paths[fused])
        elif base == "aoti-single":
            calcs[v] = FacetCalculator(paths[fused], chunk_edges=0)
        elif v == "lammps":
            import tempfile

            work = tempfile.mkdtemp(prefix="facet-flop-lammps-")
            calcs[v] = LammpsPlugin(model, a.dtype, work)
        else:
            raise SystemExit(f"unknown variant {v}")
    shapes = {"square 1024": (0, 1024, 1024, 1024), **model_shapes(model)}
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        atoms = make_atoms(n)
        for nt in threads:
            torch.set_num_threads(nt)
            res = {}
            # untimed first call (LAMMPS first: see below)
            for k, c in sorted(calcs.items(), key=lambda kc: not isinstance(kc[1], LammpsPlugin)):
                c.calculate(atoms, ["energy", "forces"])
                res[k] = (c.results["energy"], c.results["forces"].copy())
            torch.set_num_threads(1)
            rates = [{name: matmul_rate(s, dt) for name, s in shapes.items()}]
            torch.set_num_threads(nt)
            cpu: dict[str, list[float]] = {k: [] for k in calcs}
            wall: dict[str, list[float]] = {k: [] for k in calcs}
            # in-process variants alternating, then the LAMMPS runs (other processes slow this
            # one down for several calls after them: measured up to 1.5x for ~5 calls)
            names = [k for k in calcs if not isinstance(calcs[k], LammpsPlugin)]
            for rep in range(a.repeats):
                for k in names if rep % 2 == 0 else names[::-1]:
                    t0, w0 = time.process_time(), time.perf_counter()
                    calcs[k].calculate(atoms, ["energy", "forces"])
                    cpu[k].append(time.process_time() - t0)
                    wall[k].append(time.perf_counter() - w0)
            for k in calcs:
                if isinstance(calcs[k], LammpsPlugin):  # a subprocess: LAMMPS' own clock
                    for _ in range(a.repeats):
                        calcs[k].calculate(atoms, ["energy", "forces"])
                        cpu[k].append(calcs[k].step_seconds)
                        wall[k].append(calcs[k].step_seconds)
            torch.set_num_threads(1)
            rates.append({name: matmul_rate(s, dt) for name, s in shapes.items()})
            rate = {name: float(np.median([r[name] for r in rates])) for name in shapes}
            limit = mflop / rate["square 1024"]  # ms per atom (MFLOP / GFLOP/s)
            ref = res[next(iter(calcs))]
            row = {"model": a.model, "dtype": a.dtype, "n": len(atoms), "threads": nt,
                   "mflop_per_atom": mflop, "gflops": rate, "limit_ms_per_atom": limit,
                   "cpu_ms_per_atom": {k: 1e3 * float(np.median(v)) / len(atoms)
                                       for k, v in cpu.items()},
                   "wall_ms_per_atom": {k: 1e3 * float(np.median(v)) / len(atoms)
                                        for k, v in wall.items()},
                   "dE_per_atom": {k: abs(res[k][0] - ref[0]) / len(atoms) for k in res},
                   "max_dF": {k: float(np.abs(res[k][1] - ref[1]).max()) for k in res},
                   "evaluation": {k: getattr(c.potential, "last_evaluation", "") for k, c in
                                  calcs.items()},
                   "load": os.getloadavg()[0]}
            rows.append(row)
            print(f"n={len(atoms)} {a.dtype} threads={nt}: square-1024 "
                  f"{rate['square 1024']:.1f} GFLOP/s -> limit {limit:.3f} ms/atom; model "
                  "shapes " + ", ".join(f"{k} {v:.1f}" for k, v in rate.items()
                                        if k != "square 1024"), flush=True)
            for k in calcs:
                t = row["cpu_ms_per_atom"][k]
                print(f"   {k:15s} {t:7.3f} CPU ms/atom ({row['wall_ms_per_atom'][k]:.3f} wall)"
                      f" = {t / limit:5.2f}x the limit; |dE|/atom {row['dE_per_atom'][k]:.1e}"
                      f" max|dF| {row['max_dF'][k]:.1e}", flush=True)
    print("JSON", json.dumps({"rows": rows, "args": vars(a), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
