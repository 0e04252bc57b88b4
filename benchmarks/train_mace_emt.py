#!/usr/bin/env python
"""Train and evaluate a MACE model on the EMT data (runs in the MACE venv, see
``setup_mace_env.sh``; ``bench_facet_vs_mace.py`` drives it next to ``facet-train``).

    $MACE_PY benchmarks/train_mace_emt.py train --train data/split/mace_train.xyz \\
        --valid data/split/mace_valid.xyz --epochs 60 --out runs/mace-emt
    $MACE_PY benchmarks/train_mace_emt.py evaluate runs/mace-emt/mace-emt.model \\
        --heldout-dir data/heldout --json runs/mace-emt/eval.json

``train`` runs mace-torch's own trainer (``mace_run_train``, the recipe of its documentation:
AMSGrad Adam, lr 0.01, ReduceLROnPlateau, EMA 0.99, the weighted energy + forces + stress
loss, and "stage two" for the last quarter of the epochs with a 1000x energy weight) on the
given files, with MACE-MP-0 "small" hyperparameters scaled down (``SIZES``), and records its
wall time. The files carry the labels as ``REF_energy``, ``REF_forces`` and, for the bulk
frames only, ``REF_stress`` (slabs have no stress label, so MACE gives them stress weight 0).

``evaluate`` computes the errors on the held-out sets with ``facet.data.emt.heldout_table``
(the same function as ``scripts/evaluate_emt_model.py``) and the inference time per atom.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: MACE-MP-0 "small" (128x0e, radial MLP [64, 64, 64], 10 Bessel functions, r_max 6 Å; 907k
#: parameters for these 7 elements) scaled down. "mace-s32": 32 channels, radial MLP
#: [32, 32, 32], 8 Bessel functions, r_max 5 Å (74k parameters); "mace-s24": 24 channels (48k).
SIZES = {
    "mace-s32": {"num_channels": 32, "radial_MLP": "[32, 32, 32]"},
    "mace-s24": {"num_channels": 24, "radial_MLP": "[32, 32, 32]"},
    "mace-s16": {"num_channels": 16, "radial_MLP": "[32, 32, 32]"},
}
COMMON = {
    "model": "MACE",
    "max_L": 0,
    "max_ell": 3,
    "correlation": 3,
    "num_interactions": 2,
    "r_max": 5.0,
    "num_radial_basis": 8,
    "num_cutoff_basis": 5,
    "MLP_irreps": "16x0e",
    "interaction_first": "RealAgnosticInteractionBlock",
    "E0s": "average",
    "loss": "stress",
    "energy_weight": 1.0,
    "forces_weight": 100.0,
    "stress_weight": 100.0,
    "swa_energy_weight": 1000.0,
    "swa_forces_weight": 100.0,
    "lr": 0.01,
    "ema_decay": 0.99,
    "clip_grad": 10.0,
    "default_dtype": "float32",
    "device": "cpu",
    "energy_key": "REF_energy",
    "forces_key": "REF_forces",
    "stress_key": "REF_stress",
    "error_table": "PerAtomMAE",
    "num_workers": 0,
    "eval_interval": 1,
}


def train(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    opts = dict(COMMON)
    opts.update(SIZES[args.size])
    opts.update(
        name=args.name, train_file=str(Path(args.train).resolve()),
        valid_file=str(Path(args.valid).resolve()), max_num_epochs=args.epochs,
        batch_size=args.batch_size, valid_batch_size=16, seed=args.seed,
        start_swa=max(1, int(round(0.75 * args.epochs))),
        log_dir=str(out / "logs"), model_dir=str(out), checkpoints_dir=str(out / "checkpoints"),
        results_dir=str(out / "results"),
    )
    cmd = [str(Path(sys.executable).parent / "mace_run_train")]
    cmd += [f"--{k}={v}" for k, v in opts.items()]
    cmd += ["--ema", "--swa", "--amsgrad", "--save_cpu"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    t0 = time.perf_counter()
    with open(out / "train.log", "w") as log:
        proc = subprocess.run(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    (out / "train_wall.json").write_text(json.dumps({"wall_s": wall, "rc": proc.returncode,
                                                     "epochs": args.epochs, "size": args.size}))
    print(f"MACE {args.size}: {args.epochs} epochs in {wall:.0f} s (rc {proc.returncode})")
    return proc.returncode


def evaluate(args: argparse.Namespace) -> int:
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from mace.calculators import MACECalculator

    from facet.data.emt import heldout_table
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from emt_timing import time_per_atom

    calc = MACECalculator(model_paths=args.model, device="cpu", default_dtype=args.dtype)
    model = calc.models[0]
    result = {"model": args.model, "dtype": args.dtype,
              "parameters": int(sum(p.numel() for p in model.parameters()))}
    t0 = time.perf_counter()
    result["heldout"] = heldout_table(calc, args.heldout_dir, args.heldout)
    result["heldout_eval_s"] = time.perf_counter() - t0
    result["timing"] = time_per_atom(calc)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--train", required=True)
    t.add_argument("--valid", required=True)
    t.add_argument("--size", choices=sorted(SIZES), default="mace-s24")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--name", default="mace-emt")
    t.add_argument("--out", default="runs/mace-emt")
    e = sub.add_parser("evaluate")
    e.add_argument("model")
    e.add_argument("--heldout-dir", default="data/heldout")
    e.add_argument("--heldout", default="data/emt_heldout_md.xyz")
    e.add_argument("--dtype", default="float64")
    e.add_argument("--json")
    args = p.parse_args(argv)
    return train(args) if args.cmd == "train" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
