"""One benchmark measurement in a fresh process: one model, one system size, one dtype.

Run by ``bench_model.py`` with the python of the model's own environment (the project venv for
Facet, the mace venv of ``setup_mace_env.sh`` for MACE); prints one JSON object on its last line
of stdout. One size per process, so the process's peak RSS belongs to that size alone.

Measured: wall time of ``calculator.calculate(atoms, ["energy", "forces"], all_changes)`` on a
rattled fcc Cu supercell (neighbour list + model + autograd forces; both calculators also compute
the stress of the periodic cell), after warm-up; peak RSS of the process while evaluating (the
kernel's high-water mark, reset just before the first evaluation at this size) and its increase
over the RSS before that evaluation (the per-evaluation working memory).

Usage: python bench_worker.py --model {facet,mace-small,mace-medium} --size N [--dtype float64]
       [--threads 1] [--repeats 3] [--budget 90] [--warmup full|small] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
A_CU = 3.61  # Å, fcc lattice constant
RATTLE = 0.02  # Å


# ----------------------------------------------------------------------------- memory
def proc_status_mb() -> dict[str, float]:
    """VmRSS (current) and VmHWM (peak since start or last reset) of this process, in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) / 1024.0  # kB -> MB
    return out


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- structures
def supercell_repeats(n_atoms: int) -> tuple[int, int, int]:
    """The most cubic (nx, ny, nz) with 4 * nx * ny * nz == n_atoms (4-atom cubic fcc cell)."""
    if n_atoms % 4:
        raise SystemExit(f"--size must be a multiple of 4 (fcc cubic cell), got {n_atoms}")
    m = n_atoms // 4
    best = None
    for nx in range(1, m + 1):
        if m % nx:
            continue
        for ny in range(nx, m // nx + 1):
            if (m // nx) % ny:
                continue
            nz = m // (nx * ny)
            if nz < ny:
                continue
            score = nz / nx
            if best is None or score < best[0]:
                best = (score, (nx, ny, nz))
    return best[1]


def make_cu(n_atoms: int, seed: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(supercell_repeats(n_atoms))
    atoms.rattle(stdev=RATTLE, seed=seed)
    return atoms


# ----------------------------------------------------------------------------- models
def facet_calculator(dtype_name: str, seed: int, chunk_edges: int | None = None,
                     single_pass_edges: int | None = None, aoti_dir: str | None = None):
    """Facet-S's calculator: eager (the default), or with ``aoti_dir`` the AOTInductor package
    of the same weights, ``<aoti_dir>/facet-s-<dtype>-seed<seed>.pt2`` (all programs, serial
    kernels), compiled there first if missing (Facet-S: ~4 CPU-minutes)."""
    from facet.calculator import FacetCalculator

    model, info = facet_model(dtype_name, seed)
    kw = {k: v for k, v in (("chunk_edges", chunk_edges),
                            ("single_pass_edges", single_pass_edges)) if v is not None}
    if aoti_dir:
        from facet.aoti import build_package

        path = os.path.join(aoti_dir, f"facet-s-{dtype_name}-seed{seed}.pt2")
        if not os.path.exists(path):
            os.makedirs(aoti_dir, exist_ok=True)
            build_package(model, path, programs="all", threads=1)
        calc = FacetCalculator(path, **kw)
        info["name"] = "Facet-S (AOTInductor package)"
        info["package"] = path
    else:
        calc = FacetCalculator(model, dtype=dtype_name, **kw)
    info["chunking"] = [calc.potential.chunk_edges, calc.potential.single_pass_edges]
    return calc, info


def facet_model(dtype_name: str, seed: int):
    """Facet-S for Cu with every parameter perturbed (seed ``seed``), and a description."""
    import torch

    import facet

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    model = facet.build_model(facet.facet_s(["Cu"]), dtype)
    # move away from the ReZero start (residual gains 0) so every block contributes
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    info = {
        "name": "Facet-S",
        "source": os.path.dirname(facet.__file__),
        "params": facet.count_parameters(model),
        "r_max": model.config.r_max,
        "versions": {
            "torch": torch.__version__, "e3nn": _version("e3nn"), "facet": facet.__version__
        },
    }
    return model, info


# MACE-MP-0 "small" / "medium" architecture (mace-torch's training CLI with --model MACE,
# as the MP-0 models were trained): first interaction RealAgnosticInteractionBlock, then
# RealAgnosticResidualInteractionBlock; 128 channels, max_L 0 (small) / 1 (medium).
MACE_HIDDEN = {"mace-small": "128x0e", "mace-medium": "128x0e+128x1o"}


def mace_hparams(variant: str) -> dict:
    return dict(
        r_max=6.0,
        num_bessel=10,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_first="RealAgnosticInteractionBlock",
        interaction="RealAgnosticResidualInteractionBlock",
        num_interactions=2,
        hidden_irreps=MACE_HIDDEN[variant],
        MLP_irreps="16x0e",
        correlation=3,
        gate="silu",
        radial_MLP=[64, 64, 64],
        avg_num_neighbors=30.0,
        atomic_numbers=[29],
        atomic_energies=[0.0],
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
        use_reduced_cg=os.environ.get("FACET_BENCH_MACE_REDUCED_CG", "0") == "1",
    )


def mace_calculator(variant: str, dtype_name: str, seed: int, cache: str, device: str = "cpu"):
    import logging

    # e3nn 0.4.4 (pinned by mace-torch) torch.load()s its own constants file, which torch >= 2.6
    # refuses under the weights_only default; `import mace` sets this too, but only if it comes
    # first. The files loaded here are the package's own and the model this script just saved.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch

    logging.disable(logging.WARNING)  # MACECalculator logs dtype notices at WARNING
    from mace import modules  # noqa: I001  (before e3nn.o3, see above)
    from e3nn import o3
    from mace.calculators import MACECalculator

    hp = mace_hparams(variant)
    tag = "rcg" if hp["use_reduced_cg"] else "cg"
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"{variant}-{tag}-{dtype_name}-seed{seed}.model")
    if not os.path.exists(path):
        old = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, dtype_name))
        try:
            torch.manual_seed(seed)
            model = modules.ScaleShiftMACE(
                r_max=hp["r_max"],
                num_bessel=hp["num_bessel"],
                num_polynomial_cutoff=hp["num_polynomial_cutoff"],
                max_ell=hp["max_ell"],
                interaction_cls=modules.interaction_classes[hp["interaction"]],
                interaction_cls_first=modules.interaction_classes[hp["interaction_first"]],
                num_interactions=hp["num_interactions"],
                num_elements=len(hp["atomic_numbers"]),
                hidden_irreps=o3.Irreps(hp["hidden_irreps"]),
                MLP_irreps=o3.Irreps(hp["MLP_irreps"]),
                atomic_energies=np.asarray(hp["atomic_energies"], dtype=float),
                avg_num_neighbors=hp["avg_num_neighbors"],
                atomic_numbers=hp["atomic_numbers"],
                correlation=hp["correlation"],
                gate=modules.gate_dict[hp["gate"]],
                radial_MLP=hp["radial_MLP"],
                use_reduced_cg=hp["use_reduced_cg"],
                atomic_inter_scale=hp["atomic_inter_scale"],
                atomic_inter_shift=hp["atomic_inter_shift"],
            )
        finally:
            torch.set_default_dtype(old)
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save(model, tmp)
        os.replace(tmp, path)
        del model
        gc.collect()
    calc = MACECalculator(model_paths=path, device=device, default_dtype=dtype_name)
    model = calc.models[0]
    info = {
        "name": f"MACE ({variant}, MP-0 hyperparameters, random init)",
        "params": sum(p.numel() for p in model.parameters()),
        "r_max": hp["r_max"],
        "hparams": {k: v for k, v in hp.items()},
        "versions": {"torch": torch.__version__, "e3nn": _version("e3nn"),
                     "mace-torch": _version("mace-torch")},
    }
    return calc, info


def _version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


def neighbours_per_atom(atoms, r_max: float) -> float:
    from ase.neighborlist import neighbor_list

    i = neighbor_list("i", atoms, r_max)
    return len(i) / len(atoms)


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=["facet", "mace-small", "mace-medium"])
    ap.add_argument("--size", type=int, required=True, help="number of atoms (multiple of 4)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls (at most)")
    ap.add_argument("--budget", type=float, default=90.0,
                    help="seconds of timed calls: no further call once the next would exceed it "
                         "(at least one timed call)")
    ap.add_argument("--warmup", default="full", choices=["full", "small"],
                    help="full: one untimed call at this size after the small-cell warm-up; "
                         "small: only the 32-atom warm-up (for sizes where a call takes minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-edges", type=int, default=None,
                    help="Facet: pairs per chunk of the recomputing evaluation (0: never)")
    ap.add_argument("--single-pass-edges", type=int, default=None,
                    help="Facet: single pass up to this many pairs")
    ap.add_argument("--aoti-dir", default=None,
                    help="Facet: run the AOTInductor package of the same weights from this "
                         "folder (compiled there when missing) instead of the eager model")
    ap.add_argument("--cache", default=os.path.join(
        os.environ.get("FACET_BENCH_CACHE", os.path.expanduser("~/.cache/facet-bench")),
        "mace-models"))
    args = ap.parse_args()

    import torch
    from ase.calculators.calculator import all_changes

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)

    t0 = time.perf_counter()
    if args.model == "facet":
        calc, info = facet_calculator(args.dtype, args.seed, args.chunk_edges,
                                      args.single_pass_edges, args.aoti_dir)
    else:
        calc, info = mace_calculator(args.model, args.dtype, args.seed, args.cache)
    t_build = time.perf_counter() - t0

    cpu_times: list[float] = []

    def evaluate(atoms) -> float:
        c = time.process_time()  # user + system CPU time of all threads of this process
        t = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        dt = time.perf_counter() - t
        cpu_times.append(time.process_time() - c)
        f = calc.results["forces"]
        assert f.shape == (len(atoms), 3) and np.isfinite(f).all() and math.isfinite(
            calc.results["energy"]
        )
        return dt

    small = make_cu(32, args.seed)
    atoms = make_cu(args.size, args.seed)
    nbrs = neighbours_per_atom(atoms, info["r_max"])
    evaluate(small)  # one-time costs (code generation, first allocations)
    gc.collect()

    hwm_reset = reset_peak_rss()
    rss_before = proc_status_mb()["VmRSS"]
    first = evaluate(atoms) if args.warmup == "full" else None
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu_times.clear()
    times: list[float] = []
    spent = 0.0
    while len(times) < args.repeats:
        next_estimate = times[-1] if times else (first or 0.0)
        if times and spent + next_estimate > args.budget:
            break
        dt = evaluate(atoms)
        times.append(dt)
        spent += dt
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    st = proc_status_mb()
    med = float(np.median(times))
    med_cpu = float(np.median(cpu_times))
    out = {
        "model": args.model,
        "model_info": info,
        "size": len(atoms),
        "repeats_supercell": supercell_repeats(args.size),
        "neighbours_per_atom": nbrs,
        "dtype": args.dtype,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "build_s": t_build,
        "warmup": args.warmup,
        "first_call_s": first,
        "times_s": times,
        "n_repeats": len(times),
        "median_s": med,
        "ms_per_atom": 1e3 * med / len(atoms),
        "cpu_times_s": cpu_times,
        "median_cpu_s": med_cpu,
        "cpu_ms_per_atom": 1e3 * med_cpu / len(atoms),
        "minor_page_faults_per_call": faults / len(times),
        "rss_before_mb": rss_before,
        "peak_rss_mb": st["VmHWM"] if hwm_reset else None,
        "peak_rss_delta_mb": (st["VmHWM"] - rss_before) if hwm_reset else None,
        "python": sys.executable,
        "host": platform.node(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
