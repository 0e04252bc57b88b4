"""``facet-info``: describe a checkpoint or a named config (parameters, cutoff, layers, S2 grid)
and, for a checkpoint, its measured rotation/inversion error (``facet.symmetry``)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from facet.checkpoint import CheckpointError, load_model
from facet.config import PRESETS, preset
from facet.model import Facet, build_model, count_parameters
from facet.s2 import s2_grid_degree, s2_grid_size
from facet.symmetry import ENERGY_BOUND, FORCE_BOUND, symmetry_error


def grid_text(kind: str, res: tuple[int, ...]) -> str:
    """E.g. ``"lebedev 35 (434 points, exact to degree 35)"``."""
    size = "x".join(str(r) for r in res)
    return (f"{kind} {size} ({s2_grid_size(kind, res)} points, "
            f"exact to degree {s2_grid_degree(kind, res)})")


def measured_symmetry(model: Facet) -> dict:
    """The model's rotation/inversion error on a rattled 32-atom cell of its elements."""
    err = symmetry_error(model)
    return {
        "energy_per_atom": err.energy_per_atom,
        "forces": err.forces,
        "worst": err.worst,
        "within_bounds": err.within_bounds(),
        "bounds": {"energy_per_atom": ENERGY_BOUND, "forces": FORCE_BOUND},
    }


def describe(model: Facet) -> dict:
    """Parameters, elements, cutoff, layers, irreps, radial basis and S2 grid of ``model``."""
    cfg = model.config
    return {
        "parameters": count_parameters(model),
        "elements": cfg.elements,
        "r_max": cfg.r_max,
        "num_interactions": cfg.num_interactions,
        "receptive_field": cfg.receptive_field,
        "irreps": model.irreps_chain,
        "radial_basis": f"{cfg.radial_basis} x {cfg.num_radial}",
        "s2_grid": grid_text(cfg.s2_grid, tuple(cfg.s2_res)),
    }


def info_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="facet-info", description=__doc__)
    p.add_argument("model", nargs="?", help="checkpoint file (omit to describe a preset)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="facet-s")
    p.add_argument("--elements", nargs="+", default=["Cu"], help="elements for --preset")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-symmetry", action="store_true",
                   help="skip measuring a checkpoint's rotation/inversion error")
    args = p.parse_args(argv)
    try:
        if args.model:
            model = load_model(args.model)
        else:
            model = build_model(preset(args.preset, args.elements), torch.float32)
    except (CheckpointError, ValueError) as exc:
        print(f"facet-info: error: {exc}", file=sys.stderr)
        return 2
    d = describe(model)
    if args.model and not args.no_symmetry:
        d["rotation_error"] = measured_symmetry(model)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for k, v in d.items():
        if k == "rotation_error":
            status = "within" if v["within_bounds"] else "ABOVE"
            v = (f"{v['energy_per_atom']:.1e} eV/atom, {v['forces']:.1e} eV/Å (float64, 3 random "
                 f"rotations + inversion + a reflection of a rattled 32-atom cell; {status} "
                 f"the bounds {ENERGY_BOUND:g} eV/atom, {FORCE_BOUND:g} eV/Å)")
        print(f"{k:>17}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(info_main())
