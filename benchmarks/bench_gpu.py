"""Model-level GPU benchmark: Facet-S vs a MACE-MP-0-small-sized model vs SevenNet-0, energy +
forces per call on one GPU (or the CPU), at growing system sizes, side by side in one run.

What one call is, for every model: the model's forward pass and autograd forces on a graph that
is already on the device (the neighbour list is built once, outside the timing, as LAMMPS'
KOKKOS build would hand it over on the GPU):

- Facet-S: the frozen TorchScript contract (``facet.freeze.script_potential``, the module
  ``facet-deploy`` ships) on ``(species, pair_i, pair_j, rij, n)``, then the pair gradients
  scattered into forces. Random weights (``bench_worker.facet_model``), r_max 5 Å.
- MACE (small): ``ScaleShiftMACE`` with MACE-MP-0 small hyperparameters, random weights
  (``bench_worker.mace_calculator``), ``model(batch, compute_force=True)``; r_max 6 Å.
- SevenNet-0 (11Jul2024 checkpoint from the ``sevenn`` wheel), ``model(AtomGraphData)``;
  float32 only (as shipped); r_max 5 Å.

Each model runs in its own process (``--worker``) with its own Python path, because MACE pins
e3nn 0.4.4. Timing: CUDA-synchronised wall clock, median of the timed calls after warm-up; peak
GPU memory from ``torch.cuda.max_memory_allocated`` during the timed calls.

    python benchmarks/bench_gpu.py --device cuda --sizes 108,500,2048,8000,16000,32000 \\
        --site mace=/tmp/site_mace --site sevenn=/tmp/site_sevenn --out results/gpu.json
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --sizes 32,108 \\
        --python mace=~/.cache/facet-bench/mace-venv/bin/python   # the same code on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODELS = ("facet", "mace-small", "sevenn-0")


# ----------------------------------------------------------------------------- workers
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def facet_call(atoms, dtype_name: str, device: str, cache: dict):
    import torch
    from bench_worker import facet_model

    from facet.contract import forces_from_pair_gradients
    from facet.freeze import script_potential
    from facet.graph import build_graph

    if "model" not in cache:
        cache["model"], cache["info"] = facet_model(dtype_name, seed=0)
        cache["pot"] = script_potential(cache["model"]).to(device)
    model, info, pot = cache["model"], cache["info"], cache["pot"]
    dtype = getattr(torch, dtype_name)
    g = build_graph(atoms, ["Cu"], model.config.r_max)
    species = torch.as_tensor(g.species, device=device)
    pi = torch.as_tensor(g.centre, device=device)
    pj = torch.as_tensor(g.neighbour, device=device)
    rij = torch.as_tensor(g.rij, dtype=dtype, device=device)
    n = len(atoms)

    def call():
        e_local, dE = pot(species, pi, pj, rij, n)
        forces = forces_from_pair_gradients(dE, pi, pj, n)
        return e_local.sum(), forces

    return call, info, len(g.centre) / n


def mace_call(atoms, dtype_name: str, device: str, cache: dict):
    from bench_worker import mace_calculator

    models = os.path.join(os.environ.get("FACET_BENCH_CACHE", "/tmp/facet-bench"), "mace-models")
    if "calc" not in cache:
        cache["calc"], cache["info"] = mace_calculator("mace-small", dtype_name, 0, models,
                                                       device=device)
    calc, info = cache["calc"], cache["info"]
    model = calc.models[0]
    base = calc._atoms_to_batch(atoms)
    nbrs = base["edge_index"].shape[1] / len(atoms)

    def call():
        batch = calc._clone_batch(base)
        out = model(batch.to_dict(), compute_force=True, compute_stress=False, training=False)
        return out["energy"], out["forces"]

    return call, info, nbrs


def sevenn_call(atoms, dtype_name: str, device: str, cache: dict):
    import torch
    from sevenn import _keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.calculator import SevenNetCalculator
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    if dtype_name != "float32":
        raise SystemExit("SevenNet-0 ships as float32 only")
    if "calc" not in cache:
        cache["calc"] = SevenNetCalculator("7net-0", device=device)
    calc = cache["calc"]
    model = calc.model
    base = AtomGraphData.from_numpy_dict(
        unlabeled_atoms_to_graph(atoms, calc.cutoff, with_shift=False)).to(device)
    info = {"name": "SevenNet-0 (11Jul2024)", "params": sum(p.numel() for p in model.parameters()),
            "r_max": calc.cutoff, "versions": {"torch": torch.__version__}}
    nbrs = base[KEY.EDGE_IDX].shape[1] / len(atoms)

    def call():
        out = model(base.clone())
        return out[KEY.PRED_TOTAL_ENERGY], out[KEY.PRED_FORCE]

    return call, info, nbrs


def worker(model: str, sizes: list[int], dtype_name: str, device: str, budget: float) -> None:
    """One model, one dtype, every size (ascending); one JSON line per size on stdout."""
    import torch

    sys.path.insert(0, HERE)
    sys.path.insert(0, REPO)
    from bench_worker import make_cu

    torch.set_num_threads(1)
    make = {"facet": facet_call, "mace-small": mace_call, "sevenn-0": sevenn_call}[model]
    cache: dict = {}  # the model, built once per process
    for n in sizes:
        row = {"model": model, "dtype": dtype_name, "device": device, "atoms": n}
        try:
            atoms = make_cu(n, seed=0)
            call, info, nbrs = make(atoms, dtype_name, device, cache)
            for _ in range(3):  # warm-up: TorchScript profiling runs, kernel selection, caches
                call()
            sync(device)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                base_mem = torch.cuda.memory_allocated()
            times: list[float] = []
            while len(times) < 3 or (sum(times) < budget and len(times) < 30):
                t0 = time.perf_counter()
                energy, forces = call()
                sync(device)
                times.append(time.perf_counter() - t0)
            assert forces.shape == (n, 3) and bool(torch.isfinite(forces).all())
            assert bool(torch.isfinite(energy).all())
            med = statistics.median(times)
            row.update(ms=1e3 * med, us_per_atom=1e6 * med / n, calls=len(times),
                       neighbours=nbrs, params=info.get("params"), name=info.get("name"))
            if device.startswith("cuda"):
                row["peak_mib"] = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
                row["gpu"] = torch.cuda.get_device_name()
            del call, energy, forces
        except Exception as exc:  # report and go on with the next size / model
            text = str(exc)
            oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower()
            row["error"] = (f"out of memory ({type(exc).__name__})" if oom
                            else f"{type(exc).__name__}: {text}")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        if "error" in row and "out of memory" in row["error"]:
            break


# ----------------------------------------------------------------------------- driver
def run_model(model, dtype, args) -> list[dict]:
    python = args.python.get(model, sys.executable)
    env = dict(os.environ)
    site = args.site.get(model)
    if site:
        env["PYTHONPATH"] = site + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [python, os.path.abspath(__file__), "--worker", model, "--dtype", dtype,
           "--device", args.device, "--sizes", ",".join(map(str, args.sizes)),
           "--budget", str(args.budget)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        rows.append({"model": model, "dtype": dtype, "error": f"exit {proc.returncode}: "
                     + " | ".join(tail)})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'model':10s} {'dtype':8s} {'atoms':>6s} {'nbrs':>5s} {'ms/call':>9s} "
             f"{'us/atom':>8s} {'peak MiB':>9s} {'Facet faster':>12s}"]
    facet = {(r["dtype"], r["atoms"]): r for r in rows if r["model"] == "facet" and "ms" in r}
    for r in rows:
        if "ms" not in r:
            lines.append(f"{r['model']:10s} {r['dtype']:8s} {r.get('atoms', '-')!s:>6s} "
                         f"{r['error'][:90]}")
            continue
        f = facet.get((r["dtype"], r["atoms"])) or facet.get(("float32", r["atoms"]))
        ratio = f"{r['ms'] / f['ms']:.2f}x" if f and r["model"] != "facet" else ""
        mem = f"{r['peak_mib']:9.0f}" if "peak_mib" in r else f"{'-':>9s}"
        lines.append(f"{r['model']:10s} {r['dtype']:8s} {r['atoms']:6d} {r['neighbours']:5.1f} "
                     f"{r['ms']:9.2f} {r['us_per_atom']:8.2f} {mem} {ratio:>12s}")
    return "\n".join(lines)


def pairs(values: list[str]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="108,500,2048,8000,16000,32000")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per size")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per worker process")
    ap.add_argument("--python", action="append", default=[], help="MODEL=interpreter")
    ap.add_argument("--site", action="append", default=[], help="MODEL=dir put on PYTHONPATH")
    ap.add_argument("--out", help="JSON file for all rows")
    ap.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        worker(args.worker, args.sizes, args.dtype, args.device, args.budget)
        return
    args.python = {k: os.path.expanduser(v) for k, v in pairs(args.python).items()}
    args.site = pairs(args.site)
    rows: list[dict] = []
    for dtype in args.dtypes.split(","):
        for model in args.models.split(","):
            if model == "sevenn-0" and dtype != "float32":
                continue
            new = run_model(model, dtype, args)
            for r in new:
                print(json.dumps(r), flush=True)
            rows += new
    text = table(rows)
    print(text)
    print("command: " + " ".join(sys.argv))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"command": " ".join(sys.argv), "rows": rows, "table": text}, fh, indent=1)


if __name__ == "__main__":
    main()
