#!/usr/bin/env python
"""Facet vs MACE on the same EMT data, splits and wall-time budget, side by side on this CPU.

    .venv/bin/python benchmarks/bench_facet_vs_mace.py run --facet-epochs 28 --mace-epochs 20
    .venv/bin/python benchmarks/bench_facet_vs_mace.py table --json FILE.json

``run``:
1. splits ``data/emt.xyz`` exactly as ``facet-train --valid-fraction 0.1 --seed 0`` does
   (``facet.train.data.split_indices``) and writes the two halves twice: for Facet
   (``data/split/train.xyz``, ``valid.xyz``) and for MACE (the same frames with the labels under
   ``REF_energy``, ``REF_forces``, ``REF_stress``; slabs without stress);
2. starts ``facet-train`` (``--facet-preset``, the shipped model's recipe otherwise) and
   ``train_mace_emt.py train`` (mace-torch's trainer, in the MACE venv) at the same time, each
   on 1 thread under ``nice -n 5``, so that both see the same machine; the epochs of each are
   chosen beforehand to fill about the same wall time (the budget);
3. evaluates both on the held-out sets (``facet.data.emt.heldout_sets`` and the 700 K
   trajectory) in float64 and times energy + forces per atom on the same structures, 1 thread
   (``emt_timing.py``), each in its own process;
4. prints the table and writes everything to ``--json``.

``evaluate`` repeats steps 3 and 4 on the finished runs of ``--out``. ``table`` prints the
table of a finished ``--json``. The MACE venv comes from
``benchmarks/setup_mace_env.sh`` (``--mace-python`` or ``$MACE_PYTHON`` to point elsewhere).
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
DEFAULT_MACE_PY = Path(os.environ.get("FACET_BENCH_CACHE", Path.home() / ".cache/facet-bench"))
DEFAULT_MACE_PY = DEFAULT_MACE_PY / "mace-venv" / "bin" / "python"


def write_splits(data: Path, folder: Path, valid_fraction: float, seed: int) -> dict[str, int]:
    """The facet-train split of ``data`` as four files (Facet's and MACE's label keys)."""
    import ase.io

    from facet.train.data import split_indices

    frames = ase.io.read(data, ":")
    tr, va = split_indices(len(frames), valid_fraction, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", tr), ("valid", va)):
        part = [frames[i] for i in idx]
        ase.io.write(folder / f"{name}.xyz", part, format="extxyz")
        mace = []
        for f in part:
            g = f.copy()
            res = f.calc.results
            g.info["REF_energy"] = float(res["energy"])
            g.arrays["REF_forces"] = res["forces"].copy()
            if "stress" in res:
                g.info["REF_stress"] = res["stress"].copy()
            mace.append(g)  # Atoms.copy() drops the calculator: no plain energy/forces keys
        ase.io.write(folder / f"mace_{name}.xyz", mace, format="extxyz")
    return {"train": len(tr), "valid": len(va)}


def facet_command(args, out: Path) -> list[str]:
    """facet-train in two stages (``scripts/train_two_stage.py``): forces-heavy loss first,
    the energy weight raised for the last quarter, as MACE's recipe does."""
    return [
        "nice", "-n", "5", sys.executable, str(ROOT / "scripts" / "train_two_stage.py"),
        "--stage-two-epoch", str(args.facet_stage_two_epoch),
        "--stage-two-energy-weight", str(args.facet_stage_two_energy_weight), "--",
        "--train", str(args.split / "train.xyz"), "--valid", str(args.split / "valid.xyz"),
        "--preset", args.facet_preset, "--elements", "auto", "--epochs", str(args.facet_epochs),
        "--batch-size", "8", "--lr", str(args.facet_lr), "--energy-weight",
        str(args.facet_energy_weight), "--forces-weight", str(args.facet_forces_weight),
        "--stress-weight", "100", "--ema-decay", "0.99", "--clip", "10", "--save-every", "1",
        "--dtype", "float32", "--threads", "1", "--seed", "0", "--out", str(out),
    ]


def mace_command(args, out: Path) -> list[str]:
    return [
        "nice", "-n", "5", str(args.mace_python), str(ROOT / "benchmarks" / "train_mace_emt.py"),
        "train", "--train", str(args.split / "mace_train.xyz"),
        "--valid", str(args.split / "mace_valid.xyz"), "--size", args.mace_size,
        "--epochs", str(args.mace_epochs), "--threads", "1", "--seed", "0", "--out", str(out),
    ]


def facet_evaluate(model: Path, args) -> dict:
    """Held-out errors and timing of a Facet checkpoint, in a fresh process."""
    code = (
        "import json, sys, time, torch; torch.set_num_threads(1)\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]\n"
        "from facet.calculator import FacetCalculator\n"
        "from facet.model import count_parameters\n"
        "from facet.data.emt import heldout_table\n"
        "from emt_timing import time_per_atom\n"
        f"calc = FacetCalculator({str(model)!r}, dtype='float64')\n"
        "t0 = time.perf_counter()\n"
        f"r = {{'model': {str(model)!r}, 'dtype': 'float64',\n"
        "     'parameters': count_parameters(calc.model),\n"
        f"     'heldout': heldout_table(calc, {str(args.heldout_dir)!r}, {str(args.heldout)!r})}}\n"
        "r['heldout_eval_s'] = time.perf_counter() - t0\n"
        "r['timing'] = time_per_atom(calc)\n"
        "print('JSON' + json.dumps(r))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("JSON"))
    return json.loads(line[4:])


def mace_evaluate(model: Path, args, out: Path) -> dict:
    js = out / "eval.json"
    cmd = [str(args.mace_python), str(ROOT / "benchmarks" / "train_mace_emt.py"), "evaluate",
           str(model), "--heldout-dir", str(args.heldout_dir), "--heldout", str(args.heldout),
           "--json", str(js)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(js.read_text())


def mace_validation_curve(out: Path) -> list[dict]:
    """MACE's per-epoch validation errors with the time since the start of training (from its
    log file: one 'Epoch N: ... MAE_E_per_atom= ... MAE_F= ...' line per evaluation)."""
    rows = []
    logs = sorted((out / "logs").glob("*.log"))
    if not logs:
        return rows
    import re
    from datetime import datetime

    start = None
    pat = re.compile(r"Epoch (\d+):.*MAE_E_per_atom=\s*([\d.]+) meV.*MAE_F=\s*([\d.]+) meV")
    for line in logs[0].read_text().splitlines():
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            continue
        start = start or stamp
        m = pat.search(line)
        if m:
            rows.append({"epoch": int(m.group(1)) + 1, "time_s": (stamp - start).total_seconds(),
                         "valid_e_mae_mev_atom": float(m.group(2)),
                         "valid_f_mae_mev_a": float(m.group(3))})
    return rows


def facet_validation_curve(out: Path) -> list[dict]:
    rows = json.loads((out / "metrics.json").read_text())["epochs"]
    return [{k: r[k] for k in ("epoch", "time_s", "valid_e_mae_mev_atom", "valid_f_mae_mev_a")}
            for r in rows]


def run(args) -> int:
    args.split = Path(args.split)
    counts = write_splits(Path(args.data), args.split, 0.1, 0)
    print(f"split: {counts}")
    fout, mout = Path(args.out) / "facet", Path(args.out) / "mace"
    fout.mkdir(parents=True, exist_ok=True)
    mout.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    menv = dict(env)
    menv.pop("PYTHONPATH")
    t0 = time.perf_counter()
    with open(fout / "train.log", "w") as flog:
        pf = subprocess.Popen(facet_command(args, fout), cwd=ROOT, env=env, stdout=flog,
                              stderr=subprocess.STDOUT)
        pm = subprocess.Popen(mace_command(args, mout), cwd=ROOT, env=menv,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        walls = {}
        while len(walls) < 2:
            for name, p in (("facet", pf), ("mace", pm)):
                if name not in walls and p.poll() is not None:
                    walls[name] = time.perf_counter() - t0
                    print(f"{name} finished after {walls[name]:.0f} s (rc {p.returncode})")
            time.sleep(5)
    if pf.returncode or pm.returncode:
        print("a training run failed; see the logs in", args.out, file=sys.stderr)
        return 1
    result = {
        "split": counts,
        "commands": {"facet": facet_command(args, fout), "mace": mace_command(args, mout)},
        "train_wall_s": walls,
        "facet_train_loop_s": json.loads((fout / "metrics.json").read_text())["final"][
            "train_wall_time_s"],
        "curves": {"facet": facet_validation_curve(fout), "mace": mace_validation_curve(mout)},
    }
    return evaluate_runs(args, result)


def mace_final_model(out: Path) -> Path:
    """The model at the end of MACE's training: with ``--swa`` mace-torch writes the stage-one
    model as ``<name>.model`` and the final one as ``<name>_stagetwo.model``."""
    models = [m for m in sorted(out.glob("*.model")) if "compiled" not in m.name]
    final = [m for m in models if m.name.endswith("_stagetwo.model")]
    if not (final or models):
        raise FileNotFoundError(f"no MACE model in {out}")
    return (final or models)[0]


def evaluate_runs(args, result: dict) -> int:
    """Step 3 and 4 of ``run`` on the finished trainings in ``--out``."""
    fout, mout = Path(args.out) / "facet", Path(args.out) / "mace"
    result["facet"] = facet_evaluate(fout / "last.pt", args)
    model = mace_final_model(mout)
    result["mace"] = mace_evaluate(model, args, mout)
    result["mace"]["model_file"] = model.name
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print_table(result)
    return 0


def print_table(r: dict) -> None:
    f, m = r["facet"], r["mace"]
    print(f"{'':28s} {'Facet':>12s} {'MACE':>12s}")
    print(f"{'parameters':28s} {f['parameters']:12d} {m['parameters']:12d}")
    print(f"{'training wall time (s)':28s} {r['train_wall_s']['facet']:12.0f} "
          f"{r['train_wall_s']['mace']:12.0f}")
    for name in f["heldout"]:
        a, b = f["heldout"][name], m["heldout"][name]
        print(f"{name + ' E MAE meV/atom':28s} {a['e_mae_mev_atom']:12.2f} "
              f"{b['e_mae_mev_atom']:12.2f}")
        print(f"{name + ' F MAE meV/Å':28s} {a['f_mae_mev_a']:12.1f} {b['f_mae_mev_a']:12.1f}")
    for n in f["timing"]:
        a, b = f["timing"][n], m["timing"][n]
        print(f"{'CPU µs/atom, ' + n + ' atoms':28s} {a['cpu_us_per_atom']:12.0f} "
              f"{b['cpu_us_per_atom']:12.0f}")
        print(f"{'wall µs/atom, ' + n + ' atoms':28s} {a['wall_us_per_atom']:12.0f} "
              f"{b['wall_us_per_atom']:12.0f}")
    for name in ("facet", "mace"):
        c = r["curves"][name]
        if c:
            last = c[-1]
            print(f"{name} validation at the end: E {last['valid_e_mae_mev_atom']:.2f} meV/atom, "
                  f"F {last['valid_f_mae_mev_a']:.1f} meV/Å after {last['time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", default="data/emt.xyz")
    r.add_argument("--split", default="data/split")
    r.add_argument("--heldout-dir", default="data/heldout")
    r.add_argument("--heldout", default="data/emt_heldout_md.xyz")
    r.add_argument("--facet-preset", default="examples/models/facet-emt-small.json")
    r.add_argument("--facet-epochs", type=int, default=28)
    r.add_argument("--facet-lr", type=float, default=1e-2)
    r.add_argument("--facet-energy-weight", type=float, default=10.0)
    r.add_argument("--facet-forces-weight", type=float, default=100.0)
    r.add_argument("--facet-stage-two-epoch", type=int, default=21)
    r.add_argument("--facet-stage-two-energy-weight", type=float, default=1000.0)
    r.add_argument("--mace-size", default="mace-s24")
    r.add_argument("--mace-epochs", type=int, default=20)
    r.add_argument("--mace-python", default=os.environ.get("MACE_PYTHON", str(DEFAULT_MACE_PY)))
    r.add_argument("--out", default="runs/facet-vs-mace")
    r.add_argument("--json", default="benchmarks/results/facet-vs-mace.json")
    e = sub.add_parser("evaluate", help="evaluate the finished trainings of a 'run' again "
                       "(held-out errors and timing), keeping its training record in --json")
    for name, default in (("--heldout-dir", "data/heldout"),
                          ("--heldout", "data/emt_heldout_md.xyz"),
                          ("--out", "runs/facet-vs-mace"),
                          ("--json", "benchmarks/results/facet-vs-mace.json")):
        e.add_argument(name, default=default)
    e.add_argument("--mace-python", default=os.environ.get("MACE_PYTHON", str(DEFAULT_MACE_PY)))
    t = sub.add_parser("table")
    t.add_argument("--json", default="benchmarks/results/facet-vs-mace.json")
    args = p.parse_args(argv)
    if args.cmd == "table":
        print_table(json.loads(Path(args.json).read_text()))
        return 0
    if args.cmd == "evaluate":
        result = json.loads(Path(args.json).read_text())
        return evaluate_runs(args, {k: v for k, v in result.items() if k not in ("facet", "mace")})
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
