"""Shared helpers of the AOTInductor prototype (issue 15): models, structures, graphs."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import facet  # noqa: E402
from facet.graph import build_graph  # noqa: E402

SHIPPED = str(ROOT / "examples/models/facet-emt-small.pt")
# packages and exported programs (gitignored)
PKG_DIR = os.environ.get("FACET_AOTI_PKG_DIR", str(ROOT / "benchmarks/results/aoti"))


def make_model(which: str, dtype: torch.dtype, seed: int = 0):
    if which == "s":
        torch.manual_seed(seed)
        model = facet.build_model(facet.facet_s(["Cu"]), dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    else:
        model = facet.load_model(SHIPPED, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def supercell(n):
    for k in range(1, 40):
        if 4 * k ** 3 >= n:
            return k
    raise ValueError


def make_atoms(n_atoms: int, seed: int = 1, elements=("Cu",)):
    from ase.build import bulk
    if n_atoms == 8000:
        rep = (10, 10, 20)
    else:
        k = supercell(n_atoms)
        rep = (k, k, k)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
    atoms.rattle(stdev=0.02, seed=seed)
    if len(elements) > 1:
        rng = np.random.default_rng(seed)
        sym = rng.choice(list(elements), size=len(atoms))
        atoms.set_chemical_symbols(sym)
    return atoms


def graph_tensors(model, atoms, dtype):
    cfg = model.config
    g = build_graph(atoms, cfg.elements, cfg.r_max, cfg.min_distance)
    species = torch.as_tensor(g.species)
    centre = torch.as_tensor(g.centre)
    neighbour = torch.as_tensor(g.neighbour)
    rij = torch.as_tensor(g.rij, dtype=dtype)
    return species, centre, neighbour, rij


def timeit(fn, repeats=5, warm=1):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), ts
