"""``facet-info``: describe a checkpoint or a named config (parameters, cutoff, layers)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from facet.checkpoint import CheckpointError, load_model
from facet.config import PRESETS, preset
from facet.model import build_model, count_parameters


def describe(model) -> dict:
    cfg = model.config
    return {
        "parameters": count_parameters(model),
        "elements": cfg.elements,
        "r_max": cfg.r_max,
        "num_interactions": cfg.num_interactions,
        "receptive_field": cfg.receptive_field,
        "irreps": model.irreps_chain,
        "radial_basis": f"{cfg.radial_basis} x {cfg.num_radial}",
        "s2_grid": list(cfg.s2_res),
    }


def info_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="facet-info", description=__doc__)
    p.add_argument("model", nargs="?", help="checkpoint file (omit to describe a preset)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="facet-s")
    p.add_argument("--elements", nargs="+", default=["Cu"], help="elements for --preset")
    p.add_argument("--json", action="store_true", help="print JSON")
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
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        for k, v in d.items():
            print(f"{k:>17}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(info_main())
