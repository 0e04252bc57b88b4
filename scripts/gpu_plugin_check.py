"""`scripts/gpu_plugin.sh run`: the plugin on the GPU (or the CPU) against the CPU ASE references
of `prepare`, then MD timings. Needs only python3 + numpy, the `lmp` executable and the plugin.

Parity: `run 0` of each case in manifest.json with `pair_style facet FILE device DEVICE`; energy,
per-atom energies, forces and pressure compared with the float64 ASE reference.
Timing: fcc Cu (a = 3.61 Å, displaced 0.02 Å) created by LAMMPS, NVE, 1 rank: warm-up run, then
a timed run; ms per step from LAMMPS' loop time, the Pair share, and the GPU's peak memory use
(nvidia-smi sampled every 100 ms; includes the CUDA context).

Sizes: small = 108 atoms; 2k = 2048, 8k = 8192, 32k = 32768 atoms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

BAR_PER_EV_A3 = 1.6021765e6  # LAMMPS metal units: nktv2p (bar per eV/Å^3), not CODATA
SIZES = {"small": (3, 3, 3), "2k": (8, 8, 8), "8k": (16, 16, 8), "32k": (32, 16, 16)}


def run_lmp(lmp: str, deck: str, cwd: Path, tag: str, timeout: float) -> str:
    (cwd / f"in.{tag}").write_text(deck)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_PROC_BIND="false")
    proc = subprocess.run([lmp, "-in", f"in.{tag}", "-log", f"log.{tag}", "-nocite"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"lmp failed ({tag}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def parity(args, d: Path, work: Path, case: dict, k: int) -> dict:
    ref = case["ref"]
    species = " ".join(ref["species"])
    tag = f"parity{k}"
    deck = f"""plugin load {args.plugin}
units metal
atom_style atomic
atom_modify map yes
newton on
boundary p p p
read_data {d / case['data']}
pair_style facet {d / case['model']} device {args.device} {case['extra']}
pair_coeff * * {species}
compute pe all pe/atom
thermo_style custom step pe pxx pyy pzz pxy pxz pyz
thermo_modify format float %.15g
dump f all custom 1 {tag}.dump id fx fy fz c_pe
dump_modify f sort id format float %.15g
run 0
"""
    run_lmp(args.lmp, deck, work, tag, 600)
    lines = (work / f"log.{tag}").read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    row = np.array(lines[i + 1].split(), dtype=float)
    dump = np.loadtxt(work / f"{tag}.dump", skiprows=9, ndmin=2)
    n = ref["natoms"]
    de = abs(row[1] - ref["energy"]) / n
    dea = float(np.abs(dump[:, 4] - np.array(ref["energies"])).max())
    df = float(np.abs(dump[:, 1:4] - np.array(ref["forces"])).max())
    ds = float(np.abs(row[2:8] - np.array(ref["pressure"])).max()) / BAR_PER_EV_A3
    tol = case["tol"]
    ok = (de <= tol["energy_per_atom"] and dea <= tol["energies"] and df <= tol["forces"]
          and ds <= tol["stress"])
    res = {"case": case["name"], "device": args.device, "dE_per_atom": de,
           "max_dE_atom": dea, "max_dF": df, "max_dstress": ds, "ok": bool(ok)}
    print(f"parity {case['name']:<52s} |dE|/atom {de:.1e} eV, max|dE_i| {dea:.1e} eV, "
          f"max|dF| {df:.1e} eV/A, max|dstress| {ds:.1e} eV/A^3 -> {'OK' if ok else 'FAIL'}",
          flush=True)
    return res


class GpuMemory:
    """Peak memory.used of the GPUs (MiB) while the block runs (nvidia-smi, 100 ms)."""

    def __enter__(self):
        self.peak = None
        self.stop = threading.Event()
        if shutil.which("nvidia-smi"):
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout
                used = max(int(v) for v in out.split())
                self.peak = used if self.peak is None else max(self.peak, used)
            except (ValueError, subprocess.SubprocessError):
                pass
            time.sleep(0.1)

    def __exit__(self, *exc):
        self.stop.set()


def timing(args, d: Path, work: Path, t: dict, size: str) -> dict:
    nx, ny, nz = SIZES[size]
    natoms = 4 * nx * ny * nz
    steps = args.steps or (20 if natoms <= 2048 else 10 if natoms <= 8192 else 5)
    if args.device == "cpu":
        steps = max(1, steps // 5)
    tag = f"time-{Path(t['model']).stem}-{size}"
    deck = f"""plugin load {args.plugin}
units metal
atom_style atomic
newton on
boundary p p p
lattice fcc 3.61
region box block 0 {nx} 0 {ny} 0 {nz}
create_box 1 box
create_atoms 1 box
mass 1 63.546
displace_atoms all random 0.02 0.02 0.02 4242
pair_style facet {d / t['model']} device {args.device}
pair_coeff * * Cu
neighbor 2.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300.0 12345 mom yes rot no
fix nve all nve
timestep 0.001
thermo 100
run {args.warmup}
run {steps}
"""
    with GpuMemory() as mem:
        t0 = time.time()
        run_lmp(args.lmp, deck, work, tag, args.timeout)
        wall = time.time() - t0
    log = (work / f"log.{tag}").read_text()
    loop, n = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", log)[-1]
    pair = re.findall(r"^Pair\s*\|\s*\S+\s*\|\s*(\S+)", log, re.M)
    ms = 1e3 * float(loop) / int(n)
    res = {"model": t["label"], "size": size, "atoms": natoms, "steps": int(n),
           "ms_per_step": ms, "us_per_atom_step": 1e3 * ms / natoms,
           "pair_fraction": float(pair[-1]) / float(loop) if pair else None,
           "gpu_peak_mib": mem.peak, "process_seconds": wall,
           "evaluations": sorted(set(re.findall(r"Facet plugin: (\S+ ?\S*) evaluation", log)))}
    print(f"time {t['label']:<16s} {natoms:6d} atoms: {ms:9.1f} ms/step "
          f"({res['us_per_atom_step']:.1f} us/atom/step), Pair "
          f"{100 * (res['pair_fraction'] or 0):.0f} %, GPU peak {mem.peak} MiB", flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="folder written by `gpu_plugin.sh prepare`")
    p.add_argument("--lmp", required=True)
    p.add_argument("--plugin", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="2k,8k,32k")
    p.add_argument("--models", default="", help="comma-separated labels to time (default all)")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timeout", type=float, default=400)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    d = Path(args.dir).resolve()
    manifest = json.loads((d / "manifest.json").read_text())
    work = Path(args.out).resolve().parent / f"work-{args.device}"
    work.mkdir(parents=True, exist_ok=True)
    results = {"device": args.device, "parity": [], "timing": [], "errors": []}
    for k, case in enumerate(manifest["cases"]):
        try:
            results["parity"].append(parity(args, d, work, case, k))
        except Exception as exc:  # keep going: every number counts on a lent machine
            results["errors"].append(f"parity {case['name']}: {exc}")
            print(f"parity {case['name']}: ERROR {str(exc)[-1500:]}", flush=True)
    wanted = [m for m in args.models.split(",") if m]
    for size in args.sizes.split(","):
        for t in manifest["timing"]:
            if wanted and t["label"] not in wanted:
                continue
            try:
                results["timing"].append(timing(args, d, work, t, size))
            except Exception as exc:
                results["errors"].append(f"timing {t['label']} {size}: {exc}")
                print(f"time {t['label']} {size}: ERROR {str(exc)[-1500:]}", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(json.dumps(results, indent=1))
    ok = all(r["ok"] for r in results["parity"]) and not results["errors"]
    print(f"{'ALL OK' if ok else 'PROBLEMS'}: results in {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
