"""Facet-S vs a MACE-MP-0-sized MACE: CPU time and memory per energy+forces evaluation.

MACE is built with MACE-MP-0 "small" (or "medium") hyperparameters and random weights; both run
on rattled fcc Cu supercells, on CPU, in one interleaved run.

Each measurement is one fresh process (``bench_worker.py``) running one model at one size, with the
python of the model's own environment: the project venv for Facet (e3nn 0.6), the mace venv of
``setup_mace_env.sh`` for MACE (mace-torch pins e3nn 0.4.4). For every round and size the two models
run back to back (Facet first in even rounds, MACE first in odd ones), so both see the same
machine load; the reported time is the median over rounds of each process's median time.

    .venv/bin/python benchmarks/bench_model.py                      # float64, 1 thread
    .venv/bin/python benchmarks/bench_model.py --dtype float32
    .venv/bin/python benchmarks/bench_model.py --flat     # + Facet alone at 2916, 4000, 8000
    .venv/bin/python benchmarks/bench_model.py --mace medium
    .venv/bin/python benchmarks/bench_model.py --table-from benchmarks/results/bench-....json

Times: wall clock per evaluation and the CPU time (user + system) of the worker process over the
same call. On a shared machine the wall time includes waiting for a core; the CPU time does not,
so compare the CPU columns when the load average exceeds the number of cores.

Sizes whose projected Facet memory (per-atom working memory of the largest size measured so far)
would not fit in ``--mem-fraction`` of the available memory are skipped and reported as such.
Results: a table on stdout and a JSON file in benchmarks/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
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


def facet_tree_sha1(pkg_dir: str) -> str:
    """Content hash of the facet package's Python sources (detects edits during a run)."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in sorted(os.walk(pkg_dir)):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, pkg_dir).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:12]


def git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, *cmd], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def facet_snapshot(rev: str) -> tuple[str, str]:
    """Export facet/ at git revision ``rev`` to a temporary directory (for PYTHONPATH), so that
    edits to the working tree during a long run cannot change the code measured."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if commit == "?":
        sys.exit(f"--facet-commit: unknown git revision {rev!r}")
    tmp = tempfile.mkdtemp(prefix=f"facet-bench-{commit[:8]}-")
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "facet"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    return tmp, commit


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
    for kv in args.worker_env or []:
        key, _, val = kv.partition("=")
        env[key] = val
    tree = None
    if model == "facet":
        for flag in ("chunk_edges", "single_pass_edges"):
            value = getattr(args, f"facet_{flag}", None)
            if value is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(value)]
        if args.facet_aoti_dir:
            cmd += ["--aoti-dir", os.path.abspath(args.facet_aoti_dir)]
        if args.facet_src:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (args.facet_src, env.get("PYTHONPATH")) if p)
        tree = facet_tree_sha1(os.path.join(args.facet_src or ROOT, "facet"))
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    rec: dict = {"model": model, "size": size, "wall_s": wall, "loadavg_1min_before": load0,
                 "loadavg_1min_after": os.getloadavg()[0]}
    if tree:
        rec["facet_tree_sha1"] = tree
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        rec["error"] = f"exit {proc.returncode}: " + (proc.stderr or proc.stdout)[-2000:]
        log(f"  {model} {size}: FAILED ({rec['error'][-300:]})")
        return rec
    rec.update(json.loads(lines[-1]))
    cpu = rec.get("cpu_ms_per_atom")
    log(f"  {model:11s} {size:5d} atoms: {rec['ms_per_atom']:8.3f} ms/atom wall, "
        f"{'?' if cpu is None else f'{cpu:.3f}'} CPU "
        f"(median of {rec['n_repeats']}: {rec['median_s']:.3f} s), peak RSS "
        f"{rec['peak_rss_mb']:.0f} MB (+{rec['peak_rss_delta_mb']:.0f}), wall {wall:.0f} s, "
        f"load {load0:.1f}")
    return rec


def summarize(records: list[dict], model: str, size: int) -> dict | None:
    ok = [r for r in records if r["model"] == model and r["size"] == size and "error" not in r]
    if not ok:
        return None
    med = float(np.median([r["median_s"] for r in ok]))
    cpu = [r["median_cpu_s"] for r in ok if "median_cpu_s" in r]
    med_cpu = float(np.median(cpu)) if cpu else None
    return {
        "model": model,
        "size": size,
        "processes": len(ok),
        "timed_calls": sum(r["n_repeats"] for r in ok),
        "median_s": med,
        "ms_per_atom": 1e3 * med / size,
        "per_process_median_s": [r["median_s"] for r in ok],
        "median_cpu_s": med_cpu,
        "cpu_ms_per_atom": None if med_cpu is None else 1e3 * med_cpu / size,
        "per_process_median_cpu_s": cpu,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "peak_rss_delta_mb": max(r["peak_rss_delta_mb"] for r in ok),
        "kb_per_atom": 1024.0 * max(r["peak_rss_delta_mb"] for r in ok) / size,
        "params": ok[0]["model_info"]["params"],
        "chunking": ok[0]["model_info"].get("chunking"),
        "neighbours_per_atom": ok[0]["neighbours_per_atom"],
    }


def _fmt(x, nd=2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def report(records, sizes, flat, skipped, args, cmdline, mace_name):
    """Summaries per model and size, ratios, and the markdown tables."""
    summary: dict = {"facet": {}, "mace": {}}
    for s in sizes + flat:
        f = summarize(records, "facet", s)
        m = summarize(records, mace_name, s)
        if f:
            summary["facet"][s] = f
        if m:
            summary["mace"][s] = m
    lines: list[str] = []
    p = lines.append
    p(f"command: {cmdline}")
    p(f"machine: {cpu_model()}, {os.cpu_count()} cores (shared), torch threads per worker "
      f"{args.threads}, dtype {args.dtype}, {args.rounds} interleaved round(s)")
    if getattr(args, "facet_source", None):
        p(f"Facet code: {args.facet_source}")
    if getattr(args, "worker_env", None):
        p(f"worker environment: {' '.join(args.worker_env)}")
    fi = next(iter(summary["facet"].values()), None)
    mi = next(iter(summary["mace"].values()), None)
    if fi and fi.get("chunking"):
        chunk, single = fi["chunking"]
        p(f"Facet evaluation: single pass up to {single} pairs, then recomputing in chunks of "
          f"{chunk} pairs" if chunk > 0 else "Facet evaluation: single pass at every size")
    if fi:
        p(f"Facet-S: {fi['params']} params, r_max 5.0 Å, "
          f"{fi['neighbours_per_atom']:.0f} neighbours/atom")
    if mi:
        p(f"{mace_name}: {mi['params']} params, r_max 6.0 Å, "
          f"{mi['neighbours_per_atom']:.0f} neighbours/atom")
    p("")
    p("ms/atom: wall clock (CPU time of the worker process) per energy+forces evaluation; "
      "speed ratio > 1: Facet faster; memory: peak RSS of the evaluating process (its increase "
      "over the RSS before the first evaluation at that size); memory ratio > 1: Facet smaller")
    p("")
    p("| atoms | Facet ms/atom | MACE ms/atom | speed MACE/Facet | Facet peak RSS MB (Δ eval) "
      "| MACE peak RSS MB (Δ eval) | memory MACE/Facet Δ (peak) |")
    p("|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}

    def ms(x):
        return "–" if x is None else f"{x['ms_per_atom']:.2f} ({_fmt(x['cpu_ms_per_atom'])})"

    def rss(x):
        return "–" if x is None else f"{x['peak_rss_mb']:.0f} ({x['peak_rss_delta_mb']:.0f})"

    for s in sizes:
        f, m = summary["facet"].get(s), summary["mace"].get(s)
        speed = mem = ""
        if f and m:
            r = {
                "speed_wall": m["ms_per_atom"] / f["ms_per_atom"],
                "speed_cpu": (m["cpu_ms_per_atom"] / f["cpu_ms_per_atom"]
                              if m["cpu_ms_per_atom"] and f["cpu_ms_per_atom"] else None),
                "memory_delta": m["peak_rss_delta_mb"] / f["peak_rss_delta_mb"],
                "memory_peak": m["peak_rss_mb"] / f["peak_rss_mb"],
            }
            ratios[s] = r
            cpu = "" if r["speed_cpu"] is None else f" ({r['speed_cpu']:.2f}×)"
            speed = f"{r['speed_wall']:.2f}×{cpu}"
            mem = f"{r['memory_delta']:.2f}× ({r['memory_peak']:.2f}×)"
        p(f"| {s} | {ms(f)} | {ms(m)} | {speed or '–'} | {rss(f)} | {rss(m)} | {mem or '–'} |")
    if len(summary["facet"]) > 1:
        p("")
        p("Facet-S per-atom cost vs size (flatness):")
        p("| atoms | ms/atom wall | ms/atom CPU | CPU rel. to smallest | Δ eval memory MB "
          "| KB/atom | timed calls |")
        p("|---:|---:|---:|---:|---:|---:|---:|")
        base = summary["facet"][min(summary["facet"])]["cpu_ms_per_atom"]
        for s in sorted(summary["facet"]):
            f = summary["facet"][s]
            rel = f["cpu_ms_per_atom"] / base if base and f["cpu_ms_per_atom"] else None
            p(f"| {s} | {f['ms_per_atom']:.2f} | {_fmt(f['cpu_ms_per_atom'])} | {_fmt(rel)} | "
              f"{f['peak_rss_delta_mb']:.0f} | {f['kb_per_atom']:.0f} | {f['timed_calls']} |")
    for s, why in skipped.items():
        p(f"skipped Facet at {s} atoms: {why}")
    trees = {r["facet_tree_sha1"] for r in records if r.get("facet_tree_sha1")}
    if len(trees) > 1:
        p(f"WARNING: facet/ changed during this run ({len(trees)} versions of the sources): the "
          "Facet rows mix code versions; rerun with --facet-commit REV")
    for r in records:
        if "error" in r:
            p(f"FAILED {r['model']} {r['size']}: {r['error'][-200:]}")
    loads = [r["loadavg_1min_before"] for r in records]
    if loads:
        p(f"1-min load average before each worker: {min(loads):.1f}–{max(loads):.1f} "
          f"on {os.cpu_count()} cores")
    return summary, ratios, "\n".join(lines)


def table_from(path: str) -> None:
    """Re-print the tables of a saved run (e.g. after changing the report)."""
    with open(path) as fh:
        d = json.load(fh)
    args = argparse.Namespace(**d["args"])
    sizes = d.get("sizes") or [int(x) for x in args.sizes.split(",")]
    flat = d.get("flat_sizes")
    if flat is None:
        flat = [s for s in FLAT_SIZES if s not in sizes] if args.flat else []
    skipped = {int(k): v for k, v in d.get("skipped", {}).items()}
    _, _, text = report(d["records"], sizes, flat, skipped, args, d["command"],
                        f"mace-{args.mace}")
    print(text)


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
    ap.add_argument("--facet-chunk-edges", type=int, default=None,
                    help="Facet's recomputing evaluation: pairs per chunk (0: single pass always)")
    ap.add_argument("--facet-single-pass-edges", type=int, default=None,
                    help="Facet: single pass up to this many pairs (default: the calculator's)")
    ap.add_argument("--facet-aoti-dir", default=None, metavar="DIR",
                    help="Facet as its AOTInductor package (FacetCalculator(package)) instead of "
                         "eager: DIR/facet-s-<dtype>-seed<seed>.pt2, compiled by the first "
                         "worker when missing (minutes; that worker's build time is not timed)")
    ap.add_argument("--mem-fraction", type=float, default=0.7,
                    help="skip a size whose projected peak exceeds this fraction of MemAvailable")
    ap.add_argument("--facet-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--mace-python", default=os.path.join(CACHE, "mace-venv", "bin", "python"))
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--worker-env", action="append", metavar="KEY=VALUE",
                    help="environment variable for every worker (repeatable), e.g. glibc malloc "
                         "tunables: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736")
    ap.add_argument("--facet-commit", default=None, metavar="REV",
                    help="measure facet/ as of this git revision (exported to a temporary "
                         "directory) instead of the live working tree, e.g. HEAD")
    ap.add_argument("--table-from", default=None, metavar="JSON",
                    help="only re-print the tables of a saved run")
    args = ap.parse_args()
    if args.table_from:
        table_from(args.table_from)
        return

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    mace_name = f"mace-{args.mace}"
    sizes = [int(s) for s in args.sizes.split(",")]
    flat = [s for s in FLAT_SIZES if s not in sizes] if args.flat else []
    if "mace" in models and not os.path.exists(args.mace_python):
        sys.exit(f"no MACE environment at {args.mace_python}: run benchmarks/setup_mace_env.sh")
    if "facet" in models and not os.path.exists(args.facet_python):
        args.facet_python = sys.executable
    cmdline = "python benchmarks/bench_model.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    args.facet_src = None
    if args.facet_commit:
        args.facet_src, commit = facet_snapshot(args.facet_commit)
        args.facet_source = f"git {commit} (exported to a temporary directory)"
    else:
        dirty = git("status", "--porcelain", "--", "facet")
        args.facet_source = (f"working tree at git {git('rev-parse', 'HEAD')}"
                             + (" with uncommitted changes in facet/" if dirty else ""))
    log(f"Facet source: {args.facet_source}")
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

    elapsed = time.time() - t_start
    if args.facet_src:
        shutil.rmtree(args.facet_src, ignore_errors=True)
    summary, ratios, text = report(records, sizes, flat, skipped, args, cmdline, mace_name)
    text += f"\ntotal wall time {elapsed:.0f} s"
    print(text, flush=True)

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(
        HERE, "results", f"bench-{args.dtype}-t{args.threads}-{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({
            "command": cmdline,
            "args": vars(args),
            "sizes": sizes,
            "flat_sizes": flat,
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
