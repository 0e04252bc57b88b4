"""Facet-S vs MACE (MACE-MP-0 small/medium hyperparameters, random init): energy+forces time and
memory per evaluation on rattled fcc Cu supercells, on CPU, in one interleaved run.

Each measurement is one fresh process (``bench_worker.py``) running one model at one size, with the
python of the model's own environment: the project venv for Facet (e3nn 0.6), the mace venv of
``setup_mace_env.sh`` for MACE (mace-torch pins e3nn 0.4.4). For every round and size the two models
run back to back (Facet first in even rounds, MACE first in odd ones), so both see the same
machine load; the reported time is the median over rounds of each process's median time.

    .venv/bin/python benchmarks/bench_model.py                      # float64, 1 thread
    .venv/bin/python benchmarks/bench_model.py --dtype float32
    .venv/bin/python benchmarks/bench_model.py --flat               # + Facet-only 2916, 4000, 8000 atoms
    .venv/bin/python benchmarks/bench_model.py --mace medium

Sizes whose projected Facet memory (per-atom working memory of the largest size measured so far)
would not fit in ``--mem-fraction`` of the available memory are skipped and reported as such.
Results: a table on stdout and a JSON file in benchmarks/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.environ.get("FACET_BENCH_CACHE", os.path.expanduser("~/.cache/facet-bench"))
FLAT_SIZES = [2916, 4000, 8000]


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    return float("inf")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_worker(python: str, model: str, size: int, args, warmup: str) -> dict:
    cmd = [
        python, os.path.join(HERE, "bench_worker.py"),
        "--model", model, "--size", str(size), "--dtype", args.dtype,
        "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--budget", str(args.budget), "--warmup", warmup, "--seed", str(args.seed),
    ]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONWARNINGS"] = "ignore"
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    rec: dict = {"model": model, "size": size, "wall_s": wall, "loadavg_1min_before": load0,
                 "loadavg_1min_after": os.getloadavg()[0]}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        rec["error"] = f"exit {proc.returncode}: " + (proc.stderr or proc.stdout)[-2000:]
        log(f"  {model} {size}: FAILED ({rec['error'][-300:]})")
        return rec
    rec.update(json.loads(lines[-1]))
    log(f"  {model:11s} {size:5d} atoms: {rec['ms_per_atom']:8.3f} ms/atom "
        f"(median of {rec['n_repeats']}: {rec['median_s']:.3f} s), peak RSS "
        f"{rec['peak_rss_mb']:.0f} MB (+{rec['peak_rss_delta_mb']:.0f}), wall {wall:.0f} s, "
        f"load {load0:.1f}")
    return rec


def summarize(records: list[dict], model: str, size: int) -> dict | None:
    ok = [r for r in records if r["model"] == model and r["size"] == size and "error" not in r]
    if not ok:
        return None
    med = float(np.median([r["median_s"] for r in ok]))
    return {
        "model": model,
        "size": size,
        "processes": len(ok),
        "timed_calls": sum(r["n_repeats"] for r in ok),
        "median_s": med,
        "ms_per_atom": 1e3 * med / size,
        "per_process_median_s": [r["median_s"] for r in ok],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "peak_rss_delta_mb": max(r["peak_rss_delta_mb"] for r in ok),
        "kb_per_atom": 1024.0 * max(r["peak_rss_delta_mb"] for r in ok) / size,
        "params": ok[0]["model_info"]["params"],
        "neighbours_per_atom": ok[0]["neighbours_per_atom"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="108,500,2048", help="comma-separated atom counts")
    ap.add_argument("--flat", action="store_true",
                    help=f"also Facet alone at {FLAT_SIZES} atoms (per-atom cost flatness)")
    ap.add_argument("--flat-rounds", type=int, default=1, help="rounds that include the flat sizes")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads in each worker")
    ap.add_argument("--mace", default="small", choices=["small", "medium"])
    ap.add_argument("--models", default="facet,mace", help="facet,mace | facet | mace")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per size")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process (at most)")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds of timed calls per process before it stops repeating")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-fraction", type=float, default=0.7,
                    help="skip a size whose projected peak exceeds this fraction of MemAvailable")
    ap.add_argument("--facet-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--mace-python", default=os.path.join(CACHE, "mace-venv", "bin", "python"))
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    mace_name = f"mace-{args.mace}"
    sizes = [int(s) for s in args.sizes.split(",")]
    flat = [s for s in FLAT_SIZES if s not in sizes] if args.flat else []
    if "mace" in models and not os.path.exists(args.mace_python):
        sys.exit(f"no MACE environment at {args.mace_python}: run benchmarks/setup_mace_env.sh")
    if "facet" in models and not os.path.exists(args.facet_python):
        args.facet_python = sys.executable
    cmdline = "python benchmarks/bench_model.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    log(f"{cmdline}  [{cpu_model()}, {os.cpu_count()} cores, MemAvailable "
        f"{mem_available_mb() / 1024:.1f} GB]")

    records: list[dict] = []
    skipped: dict[int, str] = {}
    t_start = time.time()
    for rnd in range(args.rounds):
        order = ["facet", "mace"] if rnd % 2 == 0 else ["mace", "facet"]
        order = [m for m in order if m in models]
        round_sizes = sizes + (flat if rnd < args.flat_rounds else [])
        log(f"round {rnd + 1}/{args.rounds}: order {order}, sizes {round_sizes}")
        for size in round_sizes:
            for m in order:
                if size in flat and m != "facet":
                    continue
                if m == "facet" and size not in skipped:
                    done = [r for r in records if r["model"] == "facet" and "error" not in r]
                    if done:
                        ref = max(done, key=lambda r: r["size"])
                        per_atom = ref["peak_rss_delta_mb"] / ref["size"]
                        need = ref["rss_before_mb"] + 1.1 * per_atom * size
                        avail = mem_available_mb()
                        if need > args.mem_fraction * avail:
                            skipped[size] = (
                                f"projected peak {need / 1024:.1f} GB "
                                f"({per_atom:.2f} MB/atom from {ref['size']} atoms) > "
                                f"{args.mem_fraction:.0%} of MemAvailable {avail / 1024:.1f} GB"
                            )
                            log(f"  facet {size}: skipped, {skipped[size]}")
                if size in skipped:
                    continue
                python = args.facet_python if m == "facet" else args.mace_python
                name = "facet" if m == "facet" else mace_name
                warm = "small" if size > 2048 else "full"
                rec = run_worker(python, name, size, args, warm)
                rec["round"] = rnd
                records.append(rec)

    all_sizes = sizes + flat
    summary = {"facet": {}, "mace": {}}
    for s in all_sizes:
        f = summarize(records, "facet", s)
        m = summarize(records, mace_name, s)
        if f:
            summary["facet"][s] = f
        if m:
            summary["mace"][s] = m

    # ---------------------------------------------------------------- tables
    out_lines = []
    p = out_lines.append
    p(f"command: {cmdline}")
    p(f"machine: {cpu_model()}, {os.cpu_count()} cores (shared), torch threads per worker "
      f"{args.threads}, dtype {args.dtype}, {args.rounds} interleaved round(s)")
    fi = next(iter(summary["facet"].values()), None)
    mi = next(iter(summary["mace"].values()), None)
    if fi:
        p(f"Facet-S: {fi['params']} params, r_max 5.0 Å, {fi['neighbours_per_atom']:.0f} neighbours/atom")
    if mi:
        p(f"{mace_name}: {mi['params']} params, r_max 6.0 Å, "
          f"{mi['neighbours_per_atom']:.0f} neighbours/atom")
    p("")
    hdr = ("| atoms | Facet ms/atom | MACE ms/atom | speed MACE/Facet | Facet peak RSS MB (Δ eval) "
           "| MACE peak RSS MB (Δ eval) | memory MACE/Facet Δ (peak) |")
    p(hdr)
    p("|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for s in sizes:
        f, m = summary["facet"].get(s), summary["mace"].get(s)

        def cell(x, key, fmt):
            return format(x[key], fmt) if x else "–"

        speed = mem = mem_peak = None
        if f and m:
            speed = m["ms_per_atom"] / f["ms_per_atom"]
            mem = m["peak_rss_delta_mb"] / f["peak_rss_delta_mb"]
            mem_peak = m["peak_rss_mb"] / f["peak_rss_mb"]
            ratios[s] = {"speed_mace_over_facet": speed, "memory_delta_mace_over_facet": mem,
                         "memory_peak_mace_over_facet": mem_peak}
        rss = (lambda x: f"{x['peak_rss_mb']:.0f} ({x['peak_rss_delta_mb']:.0f})" if x else "–")
        p(f"| {s} | {cell(f, 'ms_per_atom', '.2f')} | {cell(m, 'ms_per_atom', '.2f')} | "
          f"{'–' if speed is None else f'{speed:.2f}×'} | {rss(f)} | {rss(m)} | "
          f"{'–' if mem is None else f'{mem:.2f}× ({mem_peak:.2f}×)'} |")
    if len(summary["facet"]) > 1:
        p("")
        p("Facet-S per-atom cost vs size (flatness):")
        p("| atoms | ms/atom | rel. to smallest | Δ eval memory MB | KB/atom | timed calls |")
        p("|---:|---:|---:|---:|---:|---:|")
        base = summary["facet"][min(summary["facet"])]["ms_per_atom"]
        for s in sorted(summary["facet"]):
            f = summary["facet"][s]
            p(f"| {s} | {f['ms_per_atom']:.2f} | {f['ms_per_atom'] / base:.2f} | "
              f"{f['peak_rss_delta_mb']:.0f} | {f['kb_per_atom']:.0f} | {f['timed_calls']} |")
    for s, why in skipped.items():
        p(f"skipped Facet at {s} atoms: {why}")
    failed = [r for r in records if "error" in r]
    for r in failed:
        p(f"FAILED {r['model']} {r['size']}: {r['error'][-200:]}")
    p(f"total wall time {time.time() - t_start:.0f} s")
    text = "\n".join(out_lines)
    print(text, flush=True)

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(
        HERE, "results", f"bench-{args.dtype}-t{args.threads}-{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({
            "command": cmdline,
            "args": vars(args),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "host": platform.node(),
                        "mem_available_mb_end": mem_available_mb()},
            "summary": summary,
            "ratios": ratios,
            "skipped": skipped,
            "records": records,
            "table": text,
        }, fh, indent=1)
    log(f"saved {out}")


if __name__ == "__main__":
    main()
