"""MD time per step in LAMMPS: the native plugin (`pair_style facet`) on the TorchScript file and
(path `plugin-aoti`) on an AOTInductor package vs ML-IAP's KOKKOS path vs ML-IAP's plain path,
side by side in one run.

Every measurement is the `lmp` executable under `mpirun -np R` on an fcc Cu crystal (a = 3.61 Å,
rattled 0.02 Å), NVE at 300 K, neighbor skin 2 Å, 1 thread per rank (OMP_NUM_THREADS=1), float64:
a warm-up `run W` (TorchScript's profiling executor optimises during the first calls), then the
timed `run N`; reported: LAMMPS' "Loop time" / N. For each model, size and rank count the three
paths run back to back (their order alternates between rounds) so that they see the same load.

    python benchmarks/bench_plugin.py      # shipped model + Facet-S, 108/500/2048 atoms, 1-2 ranks
    python benchmarks/bench_plugin.py --models shipped --sizes 108 --ranks 1 --steps 5
    python benchmarks/bench_plugin.py --table-from benchmarks/results/plugin-....json
    python benchmarks/bench_plugin.py --paths plugin,plugin-aoti --aoti-dir DIR  # packages
        # compiled once into DIR (facet-deploy --format aoti --aoti-programs layers: minutes)
    python benchmarks/bench_plugin.py --paths plugin,plugin@untuned  # `@untuned`: the plugin
        # with `malloc_tuning no` (glibc's default allocator behaviour); `@recompute`: with
        # `single_pass_edges 0` (the recomputing evaluation at every size); `@single`: the single
        # pass at every size; `@fixed`: `single_pass_edges 16384` (the CPU default before the
        # single pass was sized by memory); `@nofold`: `fold_images no` (every ghost row
        # exchanged, also on one rank); ML-IAP paths `kokkos@optimised`,
        # `plain@optimised`: with FACET_JIT_OPTIMIZE=1 (TorchScript's optimising executor);
        # any path as `<path>@bmm`: files deployed with --no-fused-kernels (the torch
        # formulations instead of facet.ops' fused kernels, the default); `<path>@sp16k`:
        # with --single-pass-edges 16384; `<path>@f32`: files deployed with --dtype float32

Models: `shipped` = examples/models/facet-emt-small.pt (2 layers); `facet-s` = Facet-S for Cu
(3 layers, 236k parameters) with every parameter perturbed by 0.1 randn (seed 0), as in
bench_model.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "examples" / "models" / "facet-emt-small.pt"
PATHS = ("plugin", "kokkos", "plain", "plugin-aoti")
# plugin paths as <path>@<variant>: the pair_style keywords the variant adds
VARIANTS = {"untuned": "malloc_tuning no", "recompute": "single_pass_edges 0",
            "single": "single_pass_edges 100000000", "fixed": "single_pass_edges 16384",
            "nofold": "fold_images no"}
# ML-IAP paths as <path>@<variant>: the environment the variant's run gets
ENV_VARIANTS = {"optimised": {"FACET_JIT_OPTIMIZE": "1"}}
# any path as <path>@<variant>: files deployed with these facet-deploy options
FILE_VARIANTS = {"bmm": ["--no-fused-kernels"],  # torch formulations, not facet.ops' kernels
                 "sp16k": ["--single-pass-edges", "16384"],  # the single pass to 16384 pairs
                 "f32": ["--dtype", "float32"]}  # a float32 file (float64 otherwise)


def lammps_prefix() -> Path:
    """The LAMMPS install of this run (read once: a rebuild during the run changes nothing)."""
    global _PREFIX
    if _PREFIX is None:
        _PREFIX = Path((REPO / ".venv" / "facet-lammps-prefix").read_text().strip())
    return _PREFIX


_PREFIX: Path | None = None


def prepare_models(work: Path, names: list[str], aoti_dir: Path | None = None
                   ) -> dict[str, dict]:
    """Checkpoint, plugin file and ML-IAP file for each model; with ``aoti_dir`` also its
    AOTInductor package ``<aoti_dir>/<name>.pt2`` (compiled there unless it exists)."""
    import torch

    import facet
    from facet.cli.deploy import main as deploy_main

    out = {}
    for name in names:
        if name == "shipped":
            ckpt = SHIPPED
        elif name == "facet-s":
            torch.manual_seed(0)
            model = facet.build_model(facet.facet_s(["Cu"]), torch.float64)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            ckpt = facet.save_model(model, work / "facet-s.pt")
        else:
            raise SystemExit(f"unknown model {name}")
        files = {}
        with open(os.devnull, "w") as null:
            old = sys.stdout
            sys.stdout = null
            try:
                for variant, options in {"": [], **FILE_VARIANTS}.items():
                    tag = f"{name}-{variant}" if variant else name
                    suffix = f"@{variant}" if variant else ""
                    files["plugin" + suffix] = work / f"{tag}-plugin.pt"
                    files["mliap" + suffix] = work / f"{tag}-mliap.pt"
                    assert deploy_main([str(ckpt), "--format", "plugin", *options, "-o",
                                        str(files["plugin" + suffix])]) == 0
                    assert deploy_main([str(ckpt), *options, "-o",
                                        str(files["mliap" + suffix])]) == 0
            finally:
                sys.stdout = old
        package = None
        if aoti_dir is not None:
            package = aoti_dir / f"{name}.pt2"
            if not package.exists():
                print(f"compiling {package} (minutes)", flush=True)
                assert deploy_main([str(ckpt), "--format", "aoti", "--aoti-programs", "layers",
                                    "--no-symmetry-check", "-o", str(package)]) == 0
        m = facet.load_model(ckpt)
        out[name] = {"checkpoint": str(ckpt), **files, "package": package,
                     "r_max": m.r_max, "layers": m.num_interactions}
    return out


def write_crystal(work: Path, target: int) -> tuple[Path, int]:
    from ase.build import bulk
    from ase.io.lammpsdata import write_lammps_data

    rep = max(1, round((target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((rep, rep, rep))
    atoms.rattle(0.02, seed=1)
    path = work / f"cu{len(atoms)}.data"
    write_lammps_data(path, atoms, specorder=["Cu"], masses=True, units="metal",
                      atom_style="atomic")
    return path, len(atoms)


def deck(path: str, model: dict, data: Path, warmup: int, steps: int, lib: Path) -> str:
    from facet.lammps.deck import recommended_comm_cutoff

    base, _, variant = path.partition("@")
    files = f"@{variant}" if variant in FILE_VARIANTS else ""
    mliap = model["mliap" + files]
    if base in ("plugin", "plugin-aoti"):
        file = model["plugin" + files] if base == "plugin" else model["package"]
        extra = f" {VARIANTS[variant]}" if variant and not files else ""
        pair = f"plugin load {lib}\npair_style facet {file}{extra}\npair_coeff * * Cu"
    elif base == "kokkos":
        pair = f"pair_style mliap unified {mliap} 0\npair_coeff * * Cu"
    else:
        cut = recommended_comm_cutoff(model["r_max"], model["layers"], 2.0)
        pair = (f"pair_style mliap unified {mliap} 1\npair_coeff * * Cu\n"
                f"comm_modify cutoff {cut:g}")
    return f"""units metal
atom_style atomic
newton on
boundary p p p
read_data {data}
{pair}
neighbor 2.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300.0 12345 mom yes rot no
fix nve all nve
timestep 0.001
thermo 100
run {warmup}
run {steps}
"""


def run_lmp(text: str, tag: str, work: Path, ranks: int = 1, kokkos: bool = False,
            env_extra: dict[str, str] | None = None) -> str:
    """The deck ``text`` in ``lmp`` under ``mpirun -np ranks`` (1 thread per rank; ``kokkos``:
    ``-k on t 1 -sf kk``) in ``work``, as ``in.<tag>``; returns its log (``log.<tag>``)."""
    (work / f"in.{tag}").write_text(text)
    lmp = lammps_prefix() / "bin" / "lmp"
    cmd = [shutil.which("mpirun") or "mpirun", "-np", str(ranks), str(lmp)]
    if kokkos:
        cmd += ["-k", "on", "t", "1", "-sf", "kk"]
    cmd += ["-in", f"in.{tag}", "-log", f"log.{tag}", "-screen", "none"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_PROC_BIND="false",
               PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               **(env_extra or {}))
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    log = (work / f"log.{tag}").read_text() if (work / f"log.{tag}").exists() else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                           f"{log[-2000:]}")
    return log


def loop_seconds(log: str) -> float:
    """Seconds per MD step of the last run in a LAMMPS log (its loop time / steps)."""
    t, n = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", log)[-1]
    return float(t) / int(n)


def run_one(path: str, model: dict, data: Path, ranks: int, warmup: int, steps: int,
            lib: Path, work: Path) -> tuple[float, float]:
    """Seconds per MD step (LAMMPS' loop time of the timed run / steps) and LAMMPS' "CPU use"
    of that run (process CPU time / wall time on rank 0; below 1 on a loaded machine)."""
    tag = f"{path.replace('@', '-')}-{Path(model['mliap']).stem}-{data.stem}-{ranks}"
    base, _, variant = path.partition("@")
    env = ENV_VARIANTS.get(variant, {}) if base in ("kokkos", "plain") else {}
    log = run_lmp(deck(path, model, data, warmup, steps, lib), tag, work, ranks,
                  kokkos=base == "kokkos", env_extra=env)
    cpu = re.findall(r"([\d.]+)% CPU use", log)
    return loop_seconds(log), float(cpu[-1]) / 100 if cpu else float("nan")


def cpu_ms(row: dict, path: str) -> float | None:
    """Median over rounds of loop time x CPU use: the CPU time per step of a rank (on a loaded
    machine the wall time also counts the time a rank waited for a core; MPICH's busy-waiting
    in MPI calls counts as CPU time)."""
    walls, uses = row["all_ms"].get(path), row.get("cpu_use", {}).get(path)
    if not walls or not uses:
        return None
    v = sorted(w * u for w, u in zip(walls, uses, strict=True))
    return v[len(v) // 2]


def path_name(path: str) -> str:
    base, _, variant = path.partition("@")
    name = {"plugin": "plugin", "kokkos": "KOKKOS path", "plain": "plain path",
            "plugin-aoti": "plugin, AOTI package"}[base]
    if variant in FILE_VARIANTS:
        return name + ", " + " ".join(FILE_VARIANTS[variant])
    if variant and base in ("kokkos", "plain"):
        return name + ", " + " ".join(f"{k}={v}" for k, v in ENV_VARIANTS[variant].items())
    return name + (f", {VARIANTS[variant]}" if variant else "")


def table(rows: list[dict]) -> str:
    others = []
    for r in rows:
        others += [p for p in r["ms"] if p != "plugin" and p not in others]
    names = {p: path_name(p) for p in others}
    lines = ["| model | atoms | ranks | plugin ms/step: wall (CPU) | "
             + " | ".join(f"{names[o]}: wall (CPU), ÷ plugin wall (CPU)" for o in others) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(others)]
    for r in rows:
        p, pc = r["ms"].get("plugin"), cpu_ms(r, "plugin")

        def cell(name, r=r, p=p, pc=pc):
            v, vc = r["ms"].get(name), cpu_ms(r, name)
            if v is None:
                return "-"
            text = f"{v:.0f} ({vc:.0f})" if vc else f"{v:.0f}"
            if p:
                text += f", {v / p:.2f}x" + (f" ({vc / pc:.2f}x)" if vc and pc else "")
            return text

        plug = f"{p:.0f} ({pc:.0f})" if p and pc else (f"{p:.0f}" if p else "-")
        lines.append(f"| {r['model']} | {r['atoms']} | {r['ranks']} | {plug} | "
                     + " | ".join(cell(o) for o in others) + " |")
    # 2-rank speed-ups
    lines += ["", "| model | atoms | path | 1 rank ms/step wall (CPU) | 2 ranks ms/step wall "
              "(CPU) | speed-up wall (CPU) |", "|---|---:|---|---:|---:|---:|"]
    by = {(r["model"], r["atoms"], r["ranks"]): r for r in rows}
    for (model, atoms, ranks), r in by.items():
        if ranks != 1 or (model, atoms, 2) not in by:
            continue
        two = by[(model, atoms, 2)]
        for name in r["ms"]:
            a, b = r["ms"].get(name), two["ms"].get(name)
            ac, bc = cpu_ms(r, name), cpu_ms(two, name)
            if a and b:
                cpu = f" ({ac:.0f})" if ac else ""
                cpu2 = f" ({bc:.0f})" if bc else ""
                su = f" ({ac / bc:.2f}x)" if ac and bc else ""
                lines.append(f"| {model} | {atoms} | {name} | {a:.0f}{cpu} | {b:.0f}{cpu2} | "
                             f"{a / b:.2f}x{su} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="shipped,facet-s")
    p.add_argument("--sizes", default="108,500,2048", help="approximate atom counts")
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--paths", default=",".join(PATHS[:3]),
                   help=f"comma-separated, of {', '.join(PATHS)} (plugin-aoti needs --aoti-dir)")
    p.add_argument("--aoti-dir", help="folder of the AOTInductor packages <model>.pt2 (compiled "
                                      "there when missing) for the plugin-aoti path")
    p.add_argument("--steps", type=int, default=0,
                   help="timed MD steps (default: 20 / 5 / 2 for < 300 / < 1000 / more atoms "
                        "with the shipped model, a quarter of that for Facet-S, at least 1)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", help="JSON results (default benchmarks/results/plugin-<time>.json)")
    p.add_argument("--table-from", help="print the tables of an earlier JSON result and stop")
    args = p.parse_args()
    if args.table_from:
        print(table(json.loads(Path(args.table_from).read_text())["rows"]))
        return
    from facet.lammps.plugin import plugin_library

    lib = plugin_library()
    print(f"LAMMPS {lammps_prefix()}, plugin {lib}", flush=True)
    if lib is None:
        raise SystemExit("the plugin is not built: run deploy/build_plugin.sh")
    paths = args.paths.split(",")
    unknown = {p for p in paths if p.partition("@")[0] not in PATHS
               or p.partition("@")[2] not in ("", *FILE_VARIANTS,
                                              *(VARIANTS if p.startswith("plugin")
                                                else ENV_VARIANTS))}
    if unknown:
        raise SystemExit(f"unknown path(s) {sorted(unknown)}: choose from {PATHS} (plugin "
                         f"paths also as <path>@<variant>, variants {sorted(VARIANTS)}; kokkos and "
                         f"plain with {sorted(ENV_VARIANTS)}; any with {sorted(FILE_VARIANTS)})")
    if any(p.startswith("plugin-aoti") for p in paths) and not args.aoti_dir:
        raise SystemExit("the plugin-aoti path needs --aoti-dir DIR (packages are compiled there)")
    work = Path(tempfile.mkdtemp(prefix="facet-bench-plugin-"))
    aoti_dir = Path(args.aoti_dir).resolve() if args.aoti_dir else None
    if aoti_dir:
        aoti_dir.mkdir(parents=True, exist_ok=True)
    models = prepare_models(work, args.models.split(","), aoti_dir)
    rows = []
    t_start = time.time()
    for target in (int(s) for s in args.sizes.split(",")):
        data, n = write_crystal(work, target)
        for name, model in models.items():
            steps = args.steps or max(1, (20 if n < 300 else 5 if n < 1000 else 2)
                                      // (4 if name == "facet-s" else 1))
            for ranks in (int(r) for r in args.ranks.split(",")):
                ms: dict[str, list[float]] = {k: [] for k in paths}
                cpu: dict[str, list[float]] = {k: [] for k in paths}
                for rnd in range(args.rounds):
                    order = paths if rnd % 2 == 0 else paths[::-1]
                    for path in order:
                        t, use = run_one(path, model, data, ranks, args.warmup, steps, lib,
                                         work)
                        ms[path].append(1e3 * t)
                        cpu[path].append(use)
                row = {"model": name, "atoms": n, "ranks": ranks, "steps": steps,
                       "ms": {k: sorted(v)[len(v) // 2] for k, v in ms.items() if v},
                       "all_ms": ms, "cpu_use": cpu, "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"{name:8s} {n:5d} atoms {ranks} rank(s): " + ", ".join(
                    f"{k} {v:.1f} ms/step (CPU use {100 * cpu[k][-1]:.0f} %)"
                    for k, v in row["ms"].items()) + f"; load {row['load']:.1f}", flush=True)
    print()
    print(table(rows))
    load = os.getloadavg()
    cmd = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    print(f"\ncommand: python benchmarks/{cmd}; {time.time() - t_start:.0f} s; load average "
          f"at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    out = Path(args.out) if args.out else \
        REPO / "benchmarks" / "results" / f"plugin-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    out.write_text(json.dumps({"command": cmd, "git": git, "rows": rows,
                               "table": table(rows)}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
