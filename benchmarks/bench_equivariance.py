#!/usr/bin/env python
"""Rotation/inversion error of the S2-grid layer against its cost, for each spherical quadrature.

For every grid (``FacetConfig.s2_grid`` + ``s2_res``) this measures, in float64:

* **errors**: the largest |dE|/atom (eV/atom) and max |dF| (eV/Å, forces rotated back) over 3
  random rotations, the inversion and a reflection (``facet.symmetry``), on 32-atom structures
  of random elements of the shipped model: rattled (0.1 and 0.15 Å) strained bulk cells at the
  composition's lattice constant (3 seeds each) and fcc(111) slabs (2 seeds each) - the bound
  set - plus
  two stress cases reported apart: "hot" bulk (rattle 0.2 Å, about 1500 K) and "compressed" bulk
  (lattice constant x 0.93, rattle 0.1 Å; the kind of cell of issue 13). Models:
  (a) the shipped model's trained weights evaluated with each grid, (b) Facet-S with randomly
  perturbed weights (as ``tests/conftest.py``'s ``randomized_model``), (c) any checkpoints given
  with ``--trained`` (at their own grid), optionally also on frames of ``--data``;
* **time** per energy + forces call (``FacetCalculator``, float64, 1 thread) of Facet-S and of
  the shipped config at 108 and 500 atoms (fcc Cu), every grid of a round back to back in a
  rotating order, median over calls and rounds, as a ratio to the reference grid of each model
  (Facet-S: SOFT 18x17, its old default; shipped: SOFT 12x11).

    python benchmarks/bench_equivariance.py                        # full table (~15 min)
    python benchmarks/bench_equivariance.py --no-timing            # errors only (~3 min)
    python benchmarks/bench_equivariance.py --trained runs/x/last.pt --data data/emt.xyz
    python benchmarks/bench_equivariance.py --table-from benchmarks/results/a.json b.json

Writes ``benchmarks/results/bench-equivariance-<time>.json`` with every number and the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.calculator import all_changes  # noqa: E402

import facet  # noqa: E402
from facet.calculator import FacetCalculator  # noqa: E402
from facet.checkpoint import load_model, read_checkpoint  # noqa: E402
from facet.config import FacetConfig  # noqa: E402
from facet.model import build_model, copy_parameters  # noqa: E402
from facet.s2 import s2_grid_degree, s2_grid_size  # noqa: E402
from facet.symmetry import ENERGY_BOUND, FORCE_BOUND, probe_structure, symmetry_error  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "models" / "facet-emt-small.pt"

DEFAULT_GRIDS = [
    "soft:12x11", "soft:18x17", "soft:24x23", "soft:36x35",
    "gauss:6x12", "gauss:9x18", "gauss:12x24", "gauss:16x32", "gauss:20x40",
    "lebedev:17", "lebedev:23", "lebedev:29", "lebedev:35", "lebedev:41", "lebedev:47",
]
TIMED_GRIDS = [
    "soft:12x11", "soft:18x17", "soft:24x23", "gauss:12x24", "gauss:16x32",
    "lebedev:23", "lebedev:29", "lebedev:35", "lebedev:41",
]


def parse_grid(spec: str) -> tuple[str, tuple[int, ...]]:
    """``"soft:18x17"`` -> ``("soft", (18, 17))``; ``"lebedev:29"`` -> ``("lebedev", (29,))``."""
    kind, _, res = spec.partition(":")
    return kind, tuple(int(r) for r in res.split("x"))


def structure_sets(elements: list[str]) -> dict[str, list[Atoms]]:
    """The probe structures: the bound set (bulk, slab) and two stress cases."""
    return {
        "bulk": [probe_structure(elements, "bulk", seed=s, rattle=r)
                 for r in (0.1, 0.15) for s in range(3)],
        "slab": [probe_structure(elements, "slab", seed=s, rattle=r)
                 for r in (0.1, 0.15) for s in range(2)],
        "hot": [probe_structure(elements, "bulk", seed=10 + s, rattle=0.2) for s in range(2)],
        "compressed": [
            probe_structure(elements, "bulk", seed=20 + s, rattle=0.1, scale=0.93)
            for s in range(2)
        ],
    }


def errors_on(model: facet.Facet, sets: dict[str, list[Atoms]]) -> dict[str, list[float]]:
    """set name -> [max dE/atom (eV/atom), max dF (eV/Å)] over its structures."""
    out = {}
    for name, structures in sets.items():
        errs = [symmetry_error(model, a, n_rotations=3, seed=i) for i, a in enumerate(structures)]
        out[name] = [max(e.energy_per_atom for e in errs), max(e.forces for e in errs)]
    return out


def with_grid(cfg: dict, spec: str) -> FacetConfig:
    kind, res = parse_grid(spec)
    d = dict(cfg)
    d["s2_grid"], d["s2_res"] = kind, list(res)
    return FacetConfig.from_dict(d)


def randomized(cfg: FacetConfig, seed: int = 0) -> facet.Facet:
    """Every parameter perturbed by 0.2 randn, gains in [0.5, 1] (tests/conftest.py)."""
    torch.manual_seed(seed)
    model = build_model(cfg, torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            else:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def data_frames(path: str, count: int) -> list[Atoms]:
    """The ``count`` frames of ``path`` with the largest reference force component (the
    hottest MD snapshots, most distorted cells)."""
    import ase.io

    frames = ase.io.read(path, index=":")
    fmax = [float(np.abs(f.get_forces()).max()) if f.calc is not None else 0.0 for f in frames]
    order = np.argsort(fmax)[::-1][:count]
    out = []
    for i in order:
        a = frames[i].copy()
        a.calc = None
        out.append(a)
    return out


def time_calls(calcs: dict[str, FacetCalculator], atoms: Atoms, rounds: int, repeats: int
               ) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per energy+forces call for each calculator, interleaved."""
    wall: dict[str, list[float]] = {k: [] for k in calcs}
    cpu: dict[str, list[float]] = {k: [] for k in calcs}
    names = list(calcs)
    for k in names:  # warm-up (allocations, first-call paths)
        calcs[k].calculate(atoms, ["energy", "forces"], all_changes)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        if r % 2:
            order = order[::-1]
        for k in order:
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                calcs[k].calculate(atoms, ["energy", "forces"], all_changes)
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k])}
            for k in names}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grids", default=",".join(DEFAULT_GRIDS), help="kind:res list")
    p.add_argument("--timed-grids", default=",".join(TIMED_GRIDS))
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--no-facet-s", action="store_true", help="skip the random Facet-S errors")
    p.add_argument("--sizes", default="108,500", help="atoms of the timing cells (4 n^3)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--trained", nargs="*", default=[], help="checkpoints trained with a grid")
    p.add_argument("--data", help="extxyz: also evaluate --trained (and shipped) on its frames")
    p.add_argument("--data-frames", type=int, default=6)
    p.add_argument("--out", help="JSON output (default benchmarks/results/...)")
    p.add_argument("--table-from", nargs="+", metavar="JSON",
                   help="print the table of earlier runs (merged: errors, trained, timing)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.table_from:
        merged: dict = {"grids": {}, "trained": {}, "timing": {}}
        for path in args.table_from:
            r = json.loads(Path(path).read_text())
            for key in merged:
                merged[key].update(r.get(key, {}))
        print(render_table(merged))
        return 0

    payload = read_checkpoint(SHIPPED)
    shipped_cfg = dict(payload["config"])
    elements = list(payload["elements"])
    sets = structure_sets(elements)
    extra: list[Atoms] = data_frames(args.data, args.data_frames) if args.data else []
    if extra:
        sets["data"] = extra
    grids = [g for g in args.grids.split(",") if g]
    result: dict = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "host": platform.node(), "torch": torch.__version__, "threads": 1,
        "bounds": {"energy_per_atom": ENERGY_BOUND, "forces": FORCE_BOUND},
        "grids": {}, "trained": {}, "timing": {},
    }
    facet_s_cfg = facet.facet_s(elements).to_dict()
    for spec in grids:
        kind, res = parse_grid(spec)
        row: dict = {"points": s2_grid_size(kind, res), "degree": s2_grid_degree(kind, res)}
        t0 = time.perf_counter()
        m = build_model(with_grid(shipped_cfg, spec), torch.float64)
        assert not copy_parameters(m, payload["state_dict"])
        row["shipped"] = errors_on(m.eval(), sets)
        if not args.no_facet_s:
            fs_sets = {k: v for k, v in sets.items() if k in ("bulk", "slab")}
            row["facet_s_random"] = errors_on(randomized(with_grid(facet_s_cfg, spec)), fs_sets)
        row["seconds"] = time.perf_counter() - t0
        result["grids"][spec] = row
        s = row["shipped"]
        print(f"{spec:12s} {row['points']:5d} pts  shipped bulk+slab dF "
              f"{fmt(max(s['bulk'][1], s['slab'][1]))}  hot {fmt(s['hot'][1])}  compressed "
              f"{fmt(s['compressed'][1])}" + (
                  f"  Facet-S dF {fmt(max(v[1] for v in row['facet_s_random'].values()))}"
                  if "facet_s_random" in row else ""), flush=True)
    for path in args.trained:
        model = load_model(path, dtype=torch.float64)
        cfg = model.config
        spec = f"{cfg.s2_grid}:{'x'.join(str(r) for r in cfg.s2_res)}"
        tsets = structure_sets(list(cfg.elements))
        if extra:
            tsets["data"] = extra
        result["trained"][path] = {"grid": spec, "errors": errors_on(model, tsets)}
        print(f"trained {path} ({spec}): {result['trained'][path]['errors']}", flush=True)

    if not args.no_timing:
        timed = [g for g in args.timed_grids.split(",") if g]
        models = {"Facet-S": (facet.facet_s(["Cu"]).to_dict(), "soft:18x17"),
                  "shipped": (dict(shipped_cfg, elements=elements), "soft:12x11")}
        for size in (int(s) for s in args.sizes.split(",")):
            n = round((size / 4) ** (1 / 3))
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((n, n, n))
            atoms.rattle(0.02, seed=0)
            for mname, (cfg, ref) in models.items():
                specs = timed if ref in timed else [ref, *timed]
                calcs = {g: FacetCalculator(randomized(with_grid(cfg, g))) for g in specs}
                t = time_calls(calcs, atoms, args.rounds, args.repeats)
                for g in specs:
                    t[g]["ratio_wall"] = t[g]["wall"] / t[ref]["wall"]
                    t[g]["ratio_cpu"] = t[g]["cpu"] / t[ref]["cpu"]
                result["timing"][f"{mname}@{len(atoms)}"] = {"reference": ref, "times": t}
                print(f"timing {mname} {len(atoms)} atoms: " + ", ".join(
                    f"{g} {t[g]['cpu']:.3f}s ({t[g]['ratio_cpu']:.2f}x)" for g in specs),
                    flush=True)

    table = render_table(result)
    print()
    print(table)
    result["table"] = table
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "bench-equivariance-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return 0


def render_table(result: dict) -> str:
    """Markdown table: one row per grid."""
    timing = result["timing"]
    tkeys = sorted(timing, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    has_data = any("data" in row["shipped"] for row in result["grids"].values())
    head = ("| grid | points | degree | shipped: bulk+slab dE / dF |"
            + (" data dF |" if has_data else "")
            + " hot dF | compressed dF | Facet-S random: dE / dF |"
            + "".join(f" t {k} |" for k in tkeys))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for spec, row in result["grids"].items():
        s = row["shipped"]
        de = max(s["bulk"][0], s["slab"][0])
        df = max(s["bulk"][1], s["slab"][1])
        fs = row.get("facet_s_random")
        fs_txt = (f"{fmt(max(v[0] for v in fs.values()))} / {fmt(max(v[1] for v in fs.values()))}"
                  if fs else "-")
        cells = [spec, str(row["points"]), str(row["degree"]), f"{fmt(de)} / {fmt(df)}"]
        if has_data:
            cells.append(fmt(s["data"][1]) if "data" in s else "-")
        cells += [fmt(s["hot"][1]), fmt(s["compressed"][1]), fs_txt]
        for k in tkeys:
            t = timing[k]["times"].get(spec)
            cells.append(f"{t['ratio_cpu']:.2f}x" if t else "-")
        lines.append("| " + " | ".join(cells) + " |")
    for k in tkeys:
        ref = timing[k]["reference"]
        lines.append(f"\n{k}: reference {ref} = {timing[k]['times'][ref]['cpu']:.3f} s CPU per "
                     "call (ratios are CPU time; wall ratios in the JSON)")
    for path, tr in result["trained"].items():
        e = tr["errors"]
        lines.append(f"\ntrained {path} ({tr['grid']}): " + ", ".join(
            f"{k} {fmt(v[0])} eV/atom / {fmt(v[1])} eV/Å" for k, v in e.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
