"""facet.ops' fused kernels at Facet-S's shapes, and the default calculator end to end, for two
versions of facet side by side (issue 15's kernel work).

Each version runs in its own worker process (both register the ``facet::`` operators, so they
cannot share one), the versions alternating round by round; reported: the best time of each
measurement over its rounds and the ratio old / new. Kernels: every tensor-product block of
Facet-S (forward and backward, ``facet::uvu_tp_block``) with its real Wigner couplings and path
layout on synthetic slot data (N atoms, 44 slots of which 42 are edges, cubic-B-spline-like
radial basis with four nonzero entries), and the S2 grid MLP (``facet::s2_mlp``, forward and
backward) with Facet-S's grid. End to end: ``FacetCalculator.get_forces`` on rattled fcc Cu
(weights perturbed as in bench_worker.py). 1 thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kernels.py --compare b6d634b
    .venv/bin/python benchmarks/bench_kernels.py --compare HEAD~3 --new HEAD --dtype float64
    .venv/bin/python benchmarks/bench_kernels.py            # the working tree alone

Output: the table on stdout, JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def best_ms(f, repeats: int, *operands) -> float:
    """Best wall time (ms) of ``f(*operands)`` over ``repeats`` calls after one warm-up."""
    f(*operands)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(*operands)
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def worker(args) -> None:
    """Time the kernels and the calculator with the facet found first on sys.path."""
    import torch

    sys.path.insert(0, HERE)
    from bench_worker import make_cu

    import facet
    import facet.ops
    from facet.calculator import FacetCalculator
    from facet.s2 import S2Mixing
    from facet.tensor_product import UVUTensorProduct

    facet.ops.load()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = facet.build_model(facet.facet_s(["Cu"]), dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    n, m, edges, nb = args.atoms, 44, 42, model.config.num_radial
    g = torch.Generator().manual_seed(0)
    rows: dict[str, float] = {}
    tp_fwd = tp_bwd = 0.0
    for name, tp in model.named_modules():
        if not isinstance(tp, UVUTensorProduct):
            continue
        layer = name.split(".")[1]
        for _, mul, d1, k, c_off, _, n_paths, ko in tp.blocks:
            coupling = tp.couplings[c_off : c_off + tp.d2 * d1 * k].reshape(tp.d2, d1 * k)
            y = torch.randn(n, m, tp.d2, generator=g, dtype=dtype)
            y[:, edges:] = 0
            t = (y @ coupling).reshape(n, m, d1, k)
            x = torch.randn(n, d1, mul, generator=g, dtype=dtype)
            nbr = torch.randint(0, n, (n, m), generator=g)
            basis = torch.zeros(n, m, nb, dtype=dtype)
            first = torch.randint(0, nb - 3, (n, m, 1), generator=g)
            for q in range(4):
                basis.scatter_(2, first + q, torch.rand(n, m, 1, generator=g, dtype=dtype))
            basis[:, edges:] = 0
            c = torch.randn(nb, n_paths, mul, generator=g, dtype=dtype)
            pk = tp.paths_of_k[ko : ko + k]
            grad = torch.randn(n, mul, k, generator=g, dtype=dtype)
            operands = (x, nbr, t, basis, c, pk)
            fwd = best_ms(torch.ops.facet.uvu_tp_block, args.repeats, *operands)
            bwd = best_ms(torch.ops.facet.uvu_tp_block_backward, args.repeats, grad, *operands)
            rows[f"TP L{layer} mul={mul} d1={d1} K={k}: forward"] = fwd
            rows[f"TP L{layer} mul={mul} d1={d1} K={k}: backward"] = bwd
            tp_fwd += fwd
            tp_bwd += bwd
    rows["TP all blocks: forward"] = tp_fwd
    rows["TP all blocks: backward"] = tp_bwd
    s2 = next(mod for mod in model.modules() if isinstance(mod, S2Mixing))
    dim, heads = s2.to_grid.shape[0], s2.heads
    w1, w2 = s2.mlp.weight(0), s2.mlp.weight(1)
    with torch.no_grad():
        z = torch.randn(n, dim, heads * w1.shape[1], generator=g, dtype=dtype)
        grad = torch.randn(n, dim, heads * w2.shape[1], generator=g, dtype=dtype)
        # the matrices the model hands the kernel (antipodal layout where the version has it)
        args_s2 = (z, getattr(s2, "to_grid_fused", s2.to_grid), w2.detach(),
                   getattr(s2, "from_grid_fused", s2.from_grid), heads)
        rows["S2 grid MLP: forward"] = best_ms(torch.ops.facet.s2_mlp, args.repeats, *args_s2)
        rows["S2 grid MLP: backward"] = best_ms(torch.ops.facet.s2_mlp_backward, args.repeats,
                                                grad, *args_s2)
    calc = FacetCalculator(model, dtype=dtype)
    for size in args.sizes:
        atoms = make_cu(size, 0)
        state = {"i": 0}

        def evaluate(atoms, state):
            state["i"] += 1
            atoms.rattle(1e-4, seed=state["i"])
            calc.get_forces(atoms)

        rows[f"calculator {len(atoms)} atoms: ms/atom"] = \
            best_ms(evaluate, args.repeats, atoms, state) / len(atoms)
    print("JSON " + json.dumps(rows), flush=True)


def run_worker(src: str, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--dtype", args.dtype,
           "--atoms", str(args.atoms), "--repeats", str(args.repeats),
           "--sizes", ",".join(map(str, args.sizes))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
    if out.returncode != 0 or line is None:
        sys.exit(f"worker for {src} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", metavar="REV", default=None,
                    help="the old version: a git revision (facet/ exported from it)")
    ap.add_argument("--new", metavar="REV", default=None,
                    help="the new version: a git revision (default: the working tree)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--atoms", type=int, default=500, help="atoms of the kernels' inputs")
    ap.add_argument("--sizes", default="108,500", help="calculator sizes (approximate atoms)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sizes = [int(v) for v in str(args.sizes).split(",") if v]
    if args.worker:
        worker(args)
        return
    from bench_model import facet_snapshot

    versions = {}
    for label, rev in (("old", args.compare), ("new", args.new)):
        if rev is None:
            if label == "new":
                versions[label] = (ROOT, "working tree")
            continue
        src, commit = facet_snapshot(rev)
        atexit.register(shutil.rmtree, src, True)
        versions[label] = (src, f"git {commit[:10]}")
    best: dict[str, dict[str, float]] = {label: {} for label in versions}
    order = list(versions)
    for r in range(args.rounds):
        for label in (order if r % 2 == 0 else order[::-1]):
            for key, value in run_worker(versions[label][0], args).items():
                best[label][key] = min(value, best[label].get(key, float("inf")))
    lines = [f"command: python benchmarks/bench_kernels.py {' '.join(sys.argv[1:])}",
             f"{args.dtype}, 1 thread, kernels at {args.atoms} atoms, best of {args.repeats} "
             f"calls x {args.rounds} rounds; " +
             "; ".join(f"{label} = {desc}" for label, (_, desc) in versions.items()), ""]
    labels = list(versions)
    head = " | ".join(f"{label} ms" for label in labels)
    lines.append(f"| measurement | {head} |" + (" old / new |" if len(labels) == 2 else ""))
    lines.append("|---|" + "---:|" * (len(labels) + (len(labels) == 2)))
    for key in best[labels[-1]]:
        vals = [best[label].get(key) for label in labels]
        cells = " | ".join("–" if v is None else f"{v:.3f}" for v in vals)
        ratio = ""
        if len(labels) == 2:
            ratio = " – |" if vals[0] is None else f" {vals[0] / vals[1]:.2f}x |"
        lines.append(f"| {key} | {cells} |{ratio}")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(HERE, "results", f"kernels-{args.dtype}-{stamp}.json")
    with open(path, "w") as fh:
        json.dump({"args": vars(args), "versions": {k: v[1] for k, v in versions.items()},
                   "best_ms": best, "table": text}, fh, indent=1)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
