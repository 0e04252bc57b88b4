"""``facet-deploy model.pt``: freeze a checkpoint for LAMMPS ``pair_style mliap unified``, or with
``--format plugin`` for the native plugin's ``pair_style facet``.

Writes ``<name>-mliap.pt`` (the ML-IAP unified object with the TorchScript contract inside) or
``<name>-plugin.pt`` (a TorchScript archive with its metadata inside, no pickled Python objects)
and prints the deck lines to use it. ``--check`` runs the ML-IAP result on a small structure and
compares it with the ASE calculator (through LAMMPS when its Python module is installed).

``--format aoti`` compiles the model with AOTInductor instead (``facet.aoti``; a few CPU-minutes
per program, compiled for this machine's CPU and torch): it writes the package ``<name>.pt2``
(``-o``: its path), which ``FacetCalculator("<name>.pt2")`` and the native plugin's
``pair_style facet <name>.pt2`` (C++, ``AOTIModelPackageLoader``) run directly, and next to it
``<name>-mliap.pt``, the ML-IAP object carrying the same package for ``pair_style mliap
unified`` (same deck lines; no TorchScript anywhere).

The written file is a pickle, by LAMMPS' design (``pair_style mliap unified`` unpickles it):
load only deployed files you made or trust. Checkpoints are read without running code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from facet.errors import FacetError
from facet.lammps.deck import mliap_lines, quote
from facet.lammps.mliap import FacetMLIAP


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facet-deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="Facet checkpoint (from facet-train or facet.save_model)")
    p.add_argument("-o", "--output",
                   help="output file (default: <model>-mliap.pt, or <model>-plugin.pt with "
                        "--format plugin; with --format aoti the package, default <model>.pt2, "
                        "and the ML-IAP file <stem>-mliap.pt next to it)")
    p.add_argument("--format", choices=["mliap", "plugin", "aoti"], default="mliap",
                   help="mliap: object for `pair_style mliap unified` (TorchScript inside); "
                        "plugin: TorchScript file for the native `pair_style facet` (plugin "
                        "load; no Python at run time); aoti: an AOTInductor package plus the "
                        "ML-IAP object carrying it (compiled here, minutes; no TorchScript)")
    p.add_argument("--aoti-programs", choices=["all", "single", "layers"], default="all",
                   help="aoti: all programs (default), only the single-pass energy_forces "
                        "(no KOKKOS path, no recomputing evaluation), or only the per-layer "
                        "ones")
    p.add_argument("--threads", type=int, default=0,
                   help="aoti: fix the CPU kernels' thread count (default 0: the caller's "
                        "OpenMP/torch thread count at run time; 1: serial kernels without "
                        "OpenMP, 20-30%% less CPU time per call at 1 thread per rank, measured)")
    p.add_argument("--no-fused-kernels", action="store_true",
                   help="evaluate the tensor products as batched matmuls instead of calling "
                        "facet.ops' fused CPU kernels (default for CPU files: fused, 3-5x faster "
                        "tensor products; every runtime of this facet has them: the Python "
                        "loaders build them once, the plugin has them compiled in)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="precision of the frozen model (float64: reference numbers)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: one GPU per MPI rank, chosen from the node-local rank")
    p.add_argument("--skin", type=float, default=2.0,
                   help="neighbor skin of your deck (Å), for the printed comm_modify cutoff")
    p.add_argument("--chunk-edges", type=int, default=None,
                   help="pairs per chunk of the memory-saving recomputing evaluation "
                        "(default 4096 on cpu, 262144 on cuda; 0 turns it off)")
    p.add_argument("--single-pass-edges", type=int, default=None,
                   help="up to this many pairs per rank, one plain forward+backward pass "
                        "(default 16384 on cpu, 262144 on cuda)")
    p.add_argument("--check", action="store_true",
                   help="run the deployed object on a small structure and compare with ASE")
    p.add_argument("--no-symmetry-check", action="store_true",
                   help="skip measuring the model's rotation/inversion error (facet.symmetry)")
    return p


def symmetry_warning(checkpoint: Path) -> str | None:
    """A warning when the model's measured rotation/inversion error exceeds the bounds of
    ``facet.symmetry`` (S2-grid aliasing), else None."""
    from facet.symmetry import ENERGY_BOUND, FORCE_BOUND, symmetry_error

    err = symmetry_error(checkpoint)
    if err.within_bounds():
        return None
    return (f"warning: rigidly rotating or inverting a structure changes this model's forces by "
            f"up to {err.forces:.1e} eV/Å and its energy by {err.energy_per_atom:.1e} eV/atom "
            f"(bounds {FORCE_BOUND:g} eV/Å, {ENERGY_BOUND:g} eV/atom; worst: {err.worst}): its "
            "S2 grid aliases. Retrain with the default grid (see `facet-info` and README, "
            "'The model'), or accept orientation-dependent results at that level.")


def fused_setting(args) -> bool | None:
    """``--no-fused-kernels`` and GPU files: off; else None (on where facet.ops builds)."""
    return False if args.no_fused_kernels or args.device != "cpu" else None


def build_aoti(src: Path, package_path: Path, args) -> bytes:
    """Compile the checkpoint into an AOTInductor package at ``package_path``."""
    import time

    from facet.aoti import build_package
    from facet.checkpoint import load_model

    model = load_model(src, dtype=getattr(torch, args.dtype))
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"  [{time.perf_counter() - t0:5.0f} s] {msg}", flush=True)

    fused = fused_setting(args)
    print(f"compiling {src.name} with AOTInductor ({args.aoti_programs} programs, "
          f"{args.dtype}, {args.device}): a few minutes per program", flush=True)
    return build_package(model, package_path, programs=args.aoti_programs, device=args.device,
                         threads=args.threads, fused=fused, log=log)


def deploy_plugin(src: Path, args: argparse.Namespace) -> int:
    """``--format plugin``: write the native plugin's TorchScript file, print its deck lines."""
    from facet.lammps.deck import plugin_lines
    from facet.lammps.plugin import plugin_library, write_plugin_file

    out = Path(args.output) if args.output else src.with_name(f"{src.stem}-plugin.pt")
    try:
        meta = write_plugin_file(src, out, args.dtype, args.device, args.chunk_edges,
                                 args.single_pass_edges, fused=fused_setting(args))
    except FacetError as exc:
        print(f"facet-deploy: error: {exc}", file=sys.stderr)
        return 2
    lib = plugin_library()
    print(f"wrote {quote(out)}  ({out.stat().st_size / 1e6:.2f} MB, {args.dtype}, "
          f"{args.device}; TorchScript for pair_style facet)")
    print(f"elements (LAMMPS types map by name in pair_coeff): {' '.join(meta['elements'])}")
    print(f"cutoff r_max = {meta['r_max']:g} Å, {meta['num_layers']} message-passing layers; "
          "per-layer halo exchange, default ghost cutoff")
    warning = None if args.no_symmetry_check else symmetry_warning(src)
    if warning:
        print(warning, file=sys.stderr)
    print("\nLAMMPS input lines (units metal, newton on):")
    for line in plugin_lines(out, meta["elements"], lib):
        print(f"  {line}")
    print("  (pair_coeff lists one element per atom type, in type order; NULL skips a type)")
    if lib is None:
        print("\nthe plugin is not built yet: run deploy/build_plugin.sh (./setup.sh does)",
              file=sys.stderr)
    if args.check:
        print("facet-deploy: --check covers the ML-IAP format; the plugin's parity checks are "
              "tests/test_plugin.py", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    src = Path(args.model)
    if args.format == "plugin":
        return deploy_plugin(src, args)
    package_path = None
    if args.format == "aoti":
        package_path = Path(args.output) if args.output else src.with_name(f"{src.stem}.pt2")
        out = package_path.with_name(f"{package_path.stem}-mliap.pt")
    else:
        out = Path(args.output) if args.output else src.with_name(f"{src.stem}-mliap.pt")
    try:
        package = None
        if package_path is not None:
            package = build_aoti(src, package_path, args)
        obj = FacetMLIAP.from_checkpoint(src, args.dtype, args.device, args.chunk_edges,
                                         args.single_pass_edges,
                                         format="aoti" if args.format == "aoti" else "torchscript",
                                         aoti_package=package, fused=fused_setting(args))
    except FacetError as exc:
        print(f"facet-deploy: error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, out)
    if package_path is not None:
        print(f"wrote {quote(package_path)}  ({package_path.stat().st_size / 1e6:.2f} MB, "
              f"AOTInductor package, {args.dtype}, {args.device}; FacetCalculator, the ML-IAP "
              "object below and the native plugin's pair_style facet run it)")
    print(f"wrote {quote(out)}  ({out.stat().st_size / 1e6:.2f} MB, {args.dtype}, "
          f"{args.device})")
    print(f"elements (LAMMPS types map by name in pair_coeff): {' '.join(obj.element_types)}")
    print(f"cutoff r_max = {obj.r_max:g} Å, {obj.num_layers} message-passing layers, "
          f"receptive field {obj.num_layers * obj.r_max:g} Å")
    warning = None if args.no_symmetry_check else symmetry_warning(src)
    if warning:
        print(warning, file=sys.stderr)
    print("\nLAMMPS input lines:")
    for line in ["units metal", "newton on",
                 *mliap_lines(out, obj.element_types, obj.r_max, obj.num_layers,
                              skin=args.skin)]:
        print(f"  {line}")
    print("  (pair_coeff lists one element per atom type, in type order; NULL skips a type)")
    print("\nWith KOKKOS (lmp -k on g 1 -sf kk), per-layer halo")
    print("exchange, no ghost features and the default ghost cutoff:")
    print(f"  {mliap_lines(out, obj.element_types, obj.r_max, obj.num_layers, kokkos=True)[0]}")
    if package_path is not None and args.aoti_programs != "single":
        from facet.lammps.deck import plugin_lines
        from facet.lammps.plugin import plugin_library

        print("\nThe native plugin on the package (no Python at run time, per-layer halo "
              "exchange, default ghost cutoff):")
        for line in plugin_lines(package_path, obj.element_types, plugin_library()):
            print(f"  {line}")
    if args.check:
        from facet.lammps.check import check_deployed

        report = check_deployed(src, out)
        print(report.summary())
        return 0 if report.ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
