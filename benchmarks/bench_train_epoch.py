#!/usr/bin/env python
"""Time one training epoch of facet-train: 1 process vs N data-parallel processes (torchrun), and
the streamed on-disk data against the in-memory extxyz, side by side, rounds interleaved.

    python scripts/make_emt_dataset.py --out data/emt.xyz --seed 0      # once (data/ is ignored)
    .venv/bin/python benchmarks/bench_train_epoch.py                      # CPU, 1 vs 2 processes
    .venv/bin/python benchmarks/bench_train_epoch.py --device cuda --nproc 1 2 4 --threads 4

Every configuration is a fresh ``facet-train`` run (``--epochs 1``, the shipped model's config
and batch size) in its own process(es); the time reported is the epoch's training steps alone
(``train_epoch_s`` in metrics.json: rank 0's, which waits for the slowest rank at the epoch's
closing all-reduce), the epoch's CPU time summed over the processes (``train_epoch_cpu_s``:
on a shared machine the wall time depends on the load, this much less), and the whole
command's wall time (start-up, reading, graphs, validation). Results: a table on stdout and JSON
in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export_facet(rev: str, dest: Path) -> Path:
    """``facet/`` as committed at ``rev``, extracted under ``dest`` (a PYTHONPATH entry), so that
    edits to the working tree during a run do not change what is measured."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "facet"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_config(nproc: int, train: str, args: argparse.Namespace, out: Path) -> dict:
    """One facet-train run; returns its epoch time and wall time (s)."""
    cmd = [sys.executable, "-m", "facet.train.cli"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "facet.train.cli"]
    cmd += ["--train", train, "--preset", args.preset, "--elements", "auto", "--epochs", "1",
            "--batch-size", str(args.batch_size), "--valid-fraction", "0.1", "--lr", "1e-2",
            "--dtype", args.dtype, "--threads", str(args.threads), "--seed", "0",
            "--device", args.device, "--no-plots", "--quiet", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(args.pythonpath),
           "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    row = json.loads((out / "metrics.json").read_text())["epochs"][0]
    return {"train_epoch_s": row["train_epoch_s"], "cpu_s": row["train_epoch_cpu_s"],
            "wall_s": round(wall, 2),
            "train_loss": row["train_loss"], "steps": row["step"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/emt.xyz")
    p.add_argument("--preset", default="examples/models/facet-emt-small.json")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-streamed", action="store_true",
                   help="skip the 1-process run from the --preprocess form")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--commit", default="HEAD",
                   help="measure facet/ as committed at this revision ('worktree': as on disk)")
    args = p.parse_args(argv)
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data} missing: python scripts/make_emt_dataset.py --out "
                         f"{args.data} --seed 0")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.commit == "worktree":
            args.pythonpath = ROOT
        else:
            args.pythonpath = export_facet(args.commit, tmp / "src")
            args.commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.commit],
                                         check=True, capture_output=True,
                                         text=True).stdout.strip()
        configs = [(f"{n} process{'es' if n > 1 else ''}, in memory", n, args.data)
                   for n in args.nproc]
        if not args.no_streamed:
            store = tmp / "emt.frames"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "facet.train.cli", "--train", args.data,
                            "--preprocess", str(store), "--quiet"], check=True,
                           env={**os.environ, "PYTHONPATH": str(args.pythonpath)}, cwd=ROOT)
            print(f"--preprocess: {time.perf_counter() - t0:.1f} s")
            configs.append(("1 process, streamed from disk", 1, str(store)))
        results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
        for r in range(args.rounds):
            for k, (name, n, train) in enumerate(configs):
                res = run_config(n, train, args, tmp / f"run{r}-{k}")
                results[name].append(res)
                print(f"round {r + 1}: {name}: epoch {res['train_epoch_s']:.1f} s, CPU "
                      f"{res['cpu_s']:.1f} s (command {res['wall_s']:.1f} s, {res['steps']} steps, "
                      f"train loss {res['train_loss']:.6g})", flush=True)
    base = min(x["train_epoch_s"] for x in results[configs[0][0]])
    lines = [f"one epoch, {args.device}, {args.dtype}, batch {args.batch_size}, "
             f"{args.threads} thread(s) per process, best of {args.rounds}, facet/ at "
             f"{str(args.commit)[:10]}",
             "| configuration | epoch (s) | speed-up | epoch CPU time, all processes (s) | "
             "whole command (s) |", "|---|---:|---:|---:|---:|"]
    for name, rows in results.items():
        best = min(x["train_epoch_s"] for x in rows)
        cpu = min(x["cpu_s"] for x in rows)
        wall = min(x["wall_s"] for x in rows)
        lines.append(f"| {name} | {best:.1f} | {base / best:.2f}x | {cpu:.1f} | {wall:.1f} |")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train-epoch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    args.pythonpath = str(args.pythonpath)
    path.write_text(json.dumps({"args": vars(args), "results": results, "table": table,
                                "load_avg": os.getloadavg()}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
