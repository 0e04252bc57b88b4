#!/usr/bin/env python
"""Generate the EMT reference data set (fcc Cu, Au, Ag, Ni, Pd, Pt, Al and their alloys) as extxyz.

    python scripts/make_emt_dataset.py --out data/emt.xyz --seed 0 [--size small|default]
    python scripts/make_emt_dataset.py --heldout data/emt_heldout_md.xyz

Deterministic: the same seed and size give the same file. Labels: energy (eV), forces (eV/Å) and,
except for slabs, stress (eV/Å^3, ASE convention), computed with ASE's EMT.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import ase.io

from facet.data.emt import SIZES, generate, heldout_md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/emt.xyz", help="output extxyz file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--heldout", help="also write the held-out MD trajectory to this file")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    frames = generate(args.seed, args.size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(out, frames, format="extxyz")
    kinds = collections.Counter(f.info["config_type"] for f in frames)
    n_atoms = sum(len(f) for f in frames)
    print(f"{out}: {len(frames)} frames, {n_atoms} atoms ({dict(kinds)}) in "
          f"{time.perf_counter() - t0:.0f} s")
    if args.heldout:
        held = heldout_md()
        Path(args.heldout).parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(args.heldout, held, format="extxyz")
        print(f"{args.heldout}: {len(held)} frames of held-out MD")
    return 0


if __name__ == "__main__":
    sys.exit(main())
