"""MD in LAMMPS, side by side in one KOKKOS build: Facet-S (plain and KOKKOS paths) vs the peers
that run through the same ML-IAP unified coupling, SevenNet-0 and a MACE-MP-0-small-sized model.

Every run is the project's own ``lmp`` (``deploy/build_lammps.sh``, KOKKOS on the CPU) on a
rattled fcc Cu crystal (a = 3.61 Å; 108 / 500 / 2048 atoms), 300 K velocities, NVE, ``run 1``
(set-up, first call, TorchScript warm-up) then ``run N`` timed by LAMMPS itself ("Loop time").
1 OpenMP/torch thread per rank, ``mpirun -np 1`` and ``-np 2``. Each model runs with the Python
of its own environment first on PATH (``lmp`` embeds Python and finds its prefix that way):

- facet-plain:  ``pair_style mliap unified facet-s.pt 1`` + ``comm_modify cutoff`` (ghost shell)
- facet-kokkos: ``-k on t 1 -sf kk``, ``pair_style mliap unified facet-s.pt 0`` (halo exchange)
- sevenn-0:     ``-k on t 1 -sf kk``, the file of ``sevenn_get_model 7net-0 -mliap``
- mace-small:   ``-k on t 1 -sf kk``, the file of ``mace_create_lammps_model --format mliap``
  (``MACE_ALLOW_CPU=true``); mace-small-e3nn: the same wrapper and weights without the
  cuequivariance conversion (cuequivariance has no CPU kernels; plain e3nn is faster there)

Facet-S has random weights (``bench_worker.facet_model``, deployed here in float64); MACE has
random weights (``benchmarks/setup_peer_envs.sh`` exports it); SevenNet-0 is the pretrained
checkpoint. Environments and peer files: ``bash benchmarks/setup_peer_envs.sh``.

    source $(cat .venv/facet-lammps-prefix)/facet-lammps.env
    .venv/bin/python benchmarks/bench_lammps_peers.py --out benchmarks/results/peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.environ.get("FACET_BENCH_CACHE", os.path.expanduser("~/.cache/facet-bench"))
LOOP = re.compile(r"Loop time of ([\d.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")


@dataclass
class Runner:
    name: str
    model_file: str
    venv: str  # the environment whose python lmp must embed
    kokkos: bool
    ghostneigh: int
    comm_cutoff: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    elements: str = "Cu"


def deploy_facet(path: str, dtype: str) -> None:
    """Facet-S (random weights, Cu) frozen for LAMMPS, as ``facet-deploy`` does."""
    import torch

    sys.path.insert(0, HERE)
    from bench_worker import facet_model

    from facet.checkpoint import save_model
    from facet.lammps.mliap import FacetMLIAP

    model, _ = facet_model(dtype, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "facet-s.pt")
        save_model(model, ckpt)
        torch.save(FacetMLIAP.from_checkpoint(ckpt, dtype=dtype, device="cpu"), path)


def deck(r: Runner, cells: int, steps: int) -> str:
    lines = [
        "units metal", "atom_style atomic", "boundary p p p", "newton on",
        "lattice fcc 3.61", f"region box block 0 {cells} 0 {cells} 0 {cells}",
        "create_box 1 box", "create_atoms 1 box", "mass 1 63.546",
        "displace_atoms all random 0.02 0.02 0.02 4711 units box",
        f"pair_style mliap unified {r.model_file} {r.ghostneigh}",
        f"pair_coeff * * {r.elements}",
        "neighbor 2.0 bin",
        "velocity all create 300.0 12345 mom yes rot no",
        "fix 1 all nve", "timestep 0.001", "thermo 1",
        "run 1", f"run {steps}",
    ]
    if r.comm_cutoff:
        lines.insert(12, f"comm_modify cutoff {r.comm_cutoff:g}")
    return "\n".join(lines) + "\n"


def run_one(r: Runner, cells: int, ranks: int, steps: int, workdir: str, timeout: float) -> dict:
    lmp = os.environ.get("FACET_LMP", "lmp")
    path = os.path.join(workdir, f"in.{r.name}.{cells}")
    with open(path, "w") as fh:
        fh.write(deck(r, cells, steps))
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_PROC_BIND="false", **r.env)
    env["PATH"] = os.path.join(r.venv, "bin") + os.pathsep + env["PATH"]
    env.pop("PYTHONPATH", None)
    cmd = ["mpirun", "-np", str(ranks), lmp, "-nocite", "-log", "none", "-in", path]
    if r.kokkos:
        cmd[4:4] = ["-k", "on", "t", "1", "-sf", "kk"]
    row = {"model": r.name, "ranks": ranks, "atoms": 4 * cells**3, "steps": steps}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=workdir)
    except subprocess.TimeoutExpired:
        row["error"] = f"timed out after {timeout:g} s"
        return row
    row["wall_s"] = time.perf_counter() - t0
    loops = LOOP.findall(proc.stdout)
    if proc.returncode != 0 or len(loops) < 2:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
        row["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
        return row
    seconds, _, nsteps, natoms = loops[-1]
    ms = 1e3 * float(seconds) / int(nsteps)
    row.update(ms_per_step=ms, us_per_atom_step=1e3 * ms / int(natoms), atoms=int(natoms))
    path_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("Facet ML-IAP:")]
    if path_line:
        row["facet_path"] = path_line[0]
    return row


def table(rows: list[dict]) -> str:
    ref = {(r["ranks"], r["atoms"]): r for r in rows
           if r["model"] == "facet-kokkos" and "ms_per_step" in r}
    out = [f"{'model':15s} {'ranks':>5s} {'atoms':>6s} {'ms/step':>10s} {'us/atom-step':>13s} "
           f"{'x facet-kokkos':>15s}"]
    for r in rows:
        if "ms_per_step" not in r:
            out.append(f"{r['model']:15s} {r['ranks']:5d} {r['atoms']:6d} {r['error'][:100]}")
            continue
        f = ref.get((r["ranks"], r["atoms"]))
        ratio = f"{r['ms_per_step'] / f['ms_per_step']:.2f}" if f else ""
        out.append(f"{r['model']:15s} {r['ranks']:5d} {r['atoms']:6d} {r['ms_per_step']:10.1f} "
                   f"{r['us_per_atom_step']:13.1f} {ratio:>15s}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    peers = os.path.join(CACHE, "peer-models")
    ap.add_argument("--models",
                    default="facet-plain,facet-kokkos,sevenn-0,mace-small,mace-small-e3nn")
    ap.add_argument("--cells", default="3,5,8", help="fcc cubic cells per side (4 n^3 atoms)")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--steps", default="10,5,3", help="timed steps per size")
    ap.add_argument("--dtype", default="float64", help="Facet's deployed precision")
    ap.add_argument("--sevenn", default=os.path.join(peers, "sevenn-0-mliap.pt"))
    ap.add_argument("--mace", default=os.path.join(peers, "mace-small-float64-mliap.pt"))
    ap.add_argument("--mace-e3nn", default=os.path.join(peers, "mace-small-float64-e3nn-mliap.pt"),
                    help="the same MACE wrapper without the cuequivariance conversion")
    ap.add_argument("--sevenn-venv", default=os.path.join(CACHE, "sevenn-venv"))
    ap.add_argument("--mace-venv", default=os.path.join(CACHE, "mace-venv"))
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per LAMMPS run")
    ap.add_argument("--out", help="JSON file for the rows and the table")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="facet-peers-")
    facet_file = os.path.join(workdir, f"facet-s-{args.dtype}.pt")
    deploy_facet(facet_file, args.dtype)
    venv = os.path.join(REPO, ".venv")
    sys.path.insert(0, REPO)
    import facet
    from facet.lammps.deck import recommended_comm_cutoff

    cfg = facet.facet_s(["Cu"])
    ghost = recommended_comm_cutoff(cfg.r_max, cfg.num_interactions)
    runners = {
        "facet-plain": Runner("facet-plain", facet_file, venv, False, 1, comm_cutoff=ghost),
        "facet-kokkos": Runner("facet-kokkos", facet_file, venv, True, 0),
        "sevenn-0": Runner("sevenn-0", args.sevenn, args.sevenn_venv, True, 0),
        "mace-small": Runner("mace-small", args.mace, args.mace_venv, True, 0,
                             env={"MACE_ALLOW_CPU": "true"}),
        "mace-small-e3nn": Runner("mace-small-e3nn", args.mace_e3nn, args.mace_venv, True, 0,
                                  env={"MACE_ALLOW_CPU": "true"}),
    }
    cells = [int(c) for c in args.cells.split(",")]
    steps = dict(zip(cells, (int(s) for s in args.steps.split(",")), strict=True))
    rows = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        for c in cells:
            for name in args.models.split(","):
                row = run_one(runners[name], c, ranks, steps[c], workdir, args.timeout)
                rows.append(row)
                print(json.dumps(row), flush=True)
    text = table(rows)
    print(text)
    print("command: " + " ".join(sys.argv))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"command": " ".join(sys.argv), "rows": rows, "table": text}, fh, indent=1)


if __name__ == "__main__":
    main()
