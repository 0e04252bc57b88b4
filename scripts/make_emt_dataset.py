#!/usr/bin/env python
"""Generate the EMT reference data set (fcc Cu, Au, Ag, Ni, Pd, Pt, Al and their alloys) as extxyz.

    python scripts/make_emt_dataset.py --out data/emt.xyz --seed 0 [--size small|default]
    python scripts/make_emt_dataset.py --heldout data/emt_heldout_md.xyz
    python scripts/make_emt_dataset.py --out "" --heldout-sets data/heldout [--heldout-seed 2026]

``--heldout-sets DIR`` writes the held-out test sets of ``facet.data.emt.heldout_sets`` (high-
temperature MD, vacancies and strained cells, surfaces with adatoms; their own seed and
generators, never part of a training file) to ``DIR/<name>.xyz``. ``--out ""`` skips the
training data.

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

from facet.data.emt import HELDOUT_SEED, SIZES, generate, heldout_md, heldout_sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/emt.xyz",
                   help="output extxyz file of the training data ('' to skip it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--heldout", help="also write the held-out MD trajectory to this file")
    p.add_argument("--heldout-sets", metavar="DIR",
                   help="also write the held-out test sets to DIR/<name>.xyz")
    p.add_argument("--heldout-seed", type=int, default=HELDOUT_SEED,
                   help="seed of the held-out test sets")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.out:
        frames = generate(args.seed, args.size)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(out, frames, format="extxyz")
        kinds = collections.Counter(f.info["config_type"] for f in frames)
        n_atoms = sum(len(f) for f in frames)
        print(f"{out}: {len(frames)} frames, {n_atoms} atoms ({dict(kinds)}) in "
              f"{time.perf_counter() - t0:.0f} s")
    if args.heldout_sets:
        t0 = time.perf_counter()
        folder = Path(args.heldout_sets)
        folder.mkdir(parents=True, exist_ok=True)
        for name, held in heldout_sets(args.heldout_seed).items():
            ase.io.write(folder / f"{name}.xyz", held, format="extxyz")
            print(f"{folder / name}.xyz: {len(held)} frames, {sum(len(f) for f in held)} atoms")
        print(f"held-out sets in {time.perf_counter() - t0:.0f} s")
    if args.heldout:
        held = heldout_md()
        Path(args.heldout).parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(args.heldout, held, format="extxyz")
        print(f"{args.heldout}: {len(held)} frames of held-out MD")
    return 0


if __name__ == "__main__":
    sys.exit(main())
