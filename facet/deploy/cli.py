"""``facet-deploy model.pt``: freeze a checkpoint for LAMMPS ``pair_style mliap unified``.

Writes ``<name>-mliap.pt`` (the ML-IAP unified object with the TorchScript contract inside) and
prints the deck lines to use it. ``--check`` runs the result on a small structure and compares it
with the ASE calculator (through LAMMPS when its Python module is installed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from facet.checkpoint import CheckpointError, load_model
from facet.deploy.freeze import script_model, script_potential, to_bytes
from facet.deploy.mliap import FacetMLIAP, recommended_comm_cutoff


def build_mliap(
    checkpoint: str | Path,
    dtype: str = "float64",
    device: str = "cpu",
    chunk_edges: int | None = None,
    single_pass_edges: int | None = None,
) -> FacetMLIAP:
    """Load ``checkpoint`` and wrap its frozen contract in a ``FacetMLIAP`` object (chunking:
    see ``facet.chunks``; None = the device's default)."""
    model = load_model(checkpoint, dtype=getattr(torch, dtype))
    cfg = model.config
    scripted = script_potential(model)
    metadata = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "provenance": getattr(model, "provenance", {}),
        "config": cfg.to_dict(),
        "torch_version": str(torch.__version__),
    }
    return FacetMLIAP(
        to_bytes(scripted),
        to_bytes(script_model(model)),
        elements=cfg.elements,
        r_max=cfg.r_max,
        num_layers=cfg.num_interactions,
        dtype=dtype,
        device=device,
        metadata=metadata,
        chunk_edges=chunk_edges,
        single_pass_edges=single_pass_edges,
    )


def deck_lines(obj: FacetMLIAP, path: str | Path, skin: float = 2.0) -> list[str]:
    """The LAMMPS input lines that run ``obj`` saved at ``path`` (metal units)."""
    lines = [
        "units metal",
        "newton on",
        f"pair_style mliap unified {Path(path).resolve()} 1",
        f"pair_coeff * * {' '.join(obj.element_types)}",
    ]
    if obj.num_layers > 1:
        lines.append(
            f"comm_modify cutoff {recommended_comm_cutoff(obj.r_max, obj.num_layers, skin):g}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="facet-deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="Facet checkpoint (from facet-train or facet.save_model)")
    p.add_argument("-o", "--output", help="output file (default: <model>-mliap.pt)")
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
    args = p.parse_args(argv)

    src = Path(args.model)
    out = Path(args.output) if args.output else src.with_name(f"{src.stem}-mliap.pt")
    try:
        obj = build_mliap(src, args.dtype, args.device, args.chunk_edges,
                          args.single_pass_edges)
    except CheckpointError as exc:
        print(f"facet-deploy: error: {exc}", file=sys.stderr)
        return 2
    torch.save(obj, out)
    print(f"wrote {out}  ({out.stat().st_size / 1e6:.2f} MB, {args.dtype}, {args.device})")
    print(f"elements (LAMMPS types map by name in pair_coeff): {' '.join(obj.element_types)}")
    print(f"cutoff r_max = {obj.r_max:g} Å, {obj.num_layers} message-passing layers, "
          f"receptive field {obj.num_layers * obj.r_max:g} Å")
    print("\nLAMMPS input lines:")
    for line in deck_lines(obj, out, args.skin):
        print(f"  {line}")
    print("  (pair_coeff lists one element per atom type, in type order; NULL skips a type)")
    print("\nWith KOKKOS (lmp -k on g 1 -sf kk), per-layer halo")
    print("exchange, no ghost features and the default ghost cutoff:")
    print(f"  pair_style mliap unified {out.resolve()} 0")
    if args.check:
        from facet.deploy.check import check_deployed

        ok = check_deployed(src, out)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
