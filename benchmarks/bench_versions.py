"""Two versions of facet/ side by side in one process: the default FacetCalculator (energy +
forces + stress) of a git revision (``--base``, default ``main``) against the working tree, on
rattled fcc Cu, interleaved calls, CPU time (``time.process_time``) per atom.

The base revision's ``facet/`` is extracted with ``git archive`` into a temporary directory as the
package ``facet_base`` (its ``facet`` imports rewritten), so both versions run in one process on
the same weights (Facet-S with perturbed random weights, or the shipped model) and see the same
machine load. Also prints the largest energy and force differences between the versions.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_versions.py --model s --dtype float32 \
        --sizes 108,500,2048
    ... --model shipped --dtype float64 --sizes 108,500,2048 --base main
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import facet  # noqa: E402
from facet.calculator import FacetCalculator  # noqa: E402

SHIPPED = os.path.join(ROOT, "examples", "models", "facet-emt-small.pt")


def import_revision(rev: str, name: str = "facet_base"):
    """``facet/`` of git revision ``rev`` as the package ``name``."""
    tar = subprocess.run(["git", "-C", ROOT, "archive", rev, "facet"], check=True,
                         capture_output=True).stdout
    tmp = tempfile.mkdtemp(prefix="facet-rev-")
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(tmp, filter="data")
    os.rename(os.path.join(tmp, "facet"), os.path.join(tmp, name))
    pattern = re.compile(r"\b(from|import) facet\b")
    for dirpath, _, files in os.walk(os.path.join(tmp, name)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path) as fh:
                    src = fh.read()
                src = pattern.sub(lambda m: f"{m.group(1)} {name}", src)
                src = src.replace('"facet.', f'"{name}.')  # lazy-import tables
                with open(path, "w") as fh:
                    fh.write(src)
    sys.path.insert(0, tmp)
    return importlib.import_module(name)


def make_model(pkg, which: str, dtype: torch.dtype, state=None):
    if which == "s":
        model = pkg.build_model(pkg.facet_s(["Cu"]), dtype)
        if state is None:
            torch.manual_seed(0)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1 * torch.randn_like(p))
        else:
            importlib.import_module(pkg.__name__ + ".model").copy_parameters(model, state)
    else:
        model = pkg.load_model(SHIPPED, dtype=dtype)
    return model.eval()


def make_atoms(n: int, seed: int = 1):
    from ase.build import bulk

    k = next(k for k in range(1, 40) if 4 * k**3 >= n)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((k, k, k))
    atoms.rattle(stdev=0.02, seed=seed)
    return atoms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision to compare against")
    ap.add_argument("--model", default="s", choices=["s", "shipped"])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--sizes", default="108,500,2048")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dt = getattr(torch, a.dtype)
    base = import_revision(a.base)
    base_calc_mod = importlib.import_module("facet_base.calculator")
    new_model = make_model(facet, a.model, dt)
    base_model = make_model(base, a.model, dt, dict(new_model.named_parameters()))
    calcs = {"base": base_calc_mod.FacetCalculator(base_model, dtype=a.dtype),
             "new": FacetCalculator(new_model, dtype=a.dtype)}
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        atoms = make_atoms(n)
        res = {}
        for k, c in calcs.items():
            c.calculate(atoms, ["energy", "forces"])
            res[k] = (c.results["energy"], c.results["forces"].copy())
        times: dict[str, list[float]] = {k: [] for k in calcs}
        names = list(calcs)
        for rep in range(a.repeats):
            for k in names if rep % 2 == 0 else names[::-1]:
                t0 = time.process_time()
                calcs[k].calculate(atoms, ["energy", "forces"])
                times[k].append(time.process_time() - t0)
        ms = {k: 1e3 * float(np.median(v)) / len(atoms) for k, v in times.items()}
        row = {"model": a.model, "dtype": a.dtype, "n": len(atoms), "cpu_ms_per_atom": ms,
               "speedup": ms["base"] / ms["new"],
               "dE_per_atom": abs(res["new"][0] - res["base"][0]) / len(atoms),
               "max_dF": float(np.abs(res["new"][1] - res["base"][1]).max())}
        rows.append(row)
        print(f"{a.model} {a.dtype} n={len(atoms)}: base {ms['base']:.3f} new {ms['new']:.3f} "
              f"CPU ms/atom, speed-up {row['speedup']:.2f}x; |dE|/atom {row['dE_per_atom']:.1e}"
              f" eV, max|dF| {row['max_dF']:.1e} eV/Å", flush=True)
    print("JSON", json.dumps(rows))


if __name__ == "__main__":
    main()
