"""``facet-train``: train a Facet model on extxyz data.

Example::

    facet-train --train data/emt.xyz --valid-fraction 0.1 --preset tiny --elements auto \\
        --r-max 5 --epochs 30 --batch-size 8 --lr 3e-3 --forces-weight 10 --out runs/emt
    facet-train ... --epochs 60 --resume runs/emt/last.pt      # continue the same run
    facet-train ... --device cuda                             # on the GPU (default: auto)
    torchrun --standalone --nproc-per-node 4 -m facet.train.cli ...   # data-parallel, 4 processes
    facet-train --train big.xyz --preprocess big.frames       # once: on-disk arrays ...
    facet-train --train big.frames ...                        # ... then streamed from disk

Writes ``last.pt`` (+ ``last.state.pt``), ``best.pt``, ``metrics.json``, ``metrics.csv`` and the
parity plots ``energy.png``, ``forces.png`` in ``--out``. Checkpoints hold the EMA weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ase.data
import numpy as np
import torch

from facet.config import PRESETS, FacetConfig, preset
from facet.model import build_model, count_parameters
from facet.train import distributed
from facet.train.data import DataError, GraphFrame, LabelKeys, label_summary, split_indices
from facet.train.device import DeviceError, resolve_device
from facet.train.distributed import Parallel
from facet.train.sources import Source, load_source, source_elements, source_size, take, to_graphs
from facet.train.stats import DataStatistics, sharded_statistics, statistics
from facet.train.store import FrameStore, StreamedGraphs, write_store
from facet.train.trainer import (
    Trainer,
    TrainingError,
    TrainOptions,
    load_state_file,
    state_path,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facet-train",
        description="Train a Facet interatomic potential on extxyz data (energies, forces, "
        "stresses read with ASE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--train", required=True,
                   help="training frames: an extxyz file (read into memory), or a directory "
                   "written by --preprocess (streamed from disk)")
    d.add_argument("--valid",
                   help="validation frames (extxyz or --preprocess directory); default: split "
                   "off the training set")
    d.add_argument("--valid-fraction", type=float, default=0.1,
                   help="fraction of --train held out for validation when --valid is not given")
    d.add_argument("--energy-key", default="energy", help="info key of the total energy (eV)")
    d.add_argument("--forces-key", default="forces", help="per-atom array of the forces (eV/Å)")
    d.add_argument("--stress-key", default="stress",
                   help="info key of the stress (eV/Å^3, ASE sign; Voigt 6 or 3x3)")
    d.add_argument("--preprocess", metavar="DIR",
                   help="only convert --train (extxyz, read one frame at a time) into the "
                   "on-disk format in the new directory DIR, then exit; train from it with "
                   "--train DIR")
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="tiny",
                   help=f"one of {sorted(PRESETS)}, or a JSON file of FacetConfig fields "
                   "(optionally with \"preset\": name to start from)")
    m.add_argument("--elements", default="auto",
                   help="comma-separated chemical symbols, or 'auto' (those in the data)")
    m.add_argument("--r-max", type=float, help="cutoff (Å); overrides the preset")
    m.add_argument("--resid-init", type=float, help="initial residual gain; overrides the preset")
    m.add_argument("--avg-num-neighbors", type=float,
                   help="neighbour-sum normalisation; default: computed from the training data")
    m.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=100, help="total epochs (also when resuming)")
    t.add_argument("--batch-size", type=int, default=8,
                   help="structures per step: the global batch, split among torchrun processes")
    t.add_argument("--valid-batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    t.add_argument("--scheduler", choices=("cosine", "constant"), default="cosine")
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--min-lr-ratio", type=float, default=0.01,
                   help="final learning rate of the cosine, relative to --lr")
    t.add_argument("--weight-decay", type=float, default=1e-5)
    t.add_argument("--energy-weight", type=float, default=1.0, help="weight of MSE(E/atom)")
    t.add_argument("--forces-weight", type=float, default=10.0, help="weight of MSE(F)")
    t.add_argument("--stress-weight", type=float, default=1.0, help="weight of MSE(stress)")
    t.add_argument("--ema-decay", type=float, default=0.99)
    t.add_argument("--clip", type=float, default=10.0, help="max gradient norm (0: off)")
    t.add_argument("--save-every", type=int, default=5, help="checkpoint every N epochs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int,
                   help="torch CPU threads per process (default: torch's choice)")
    t.add_argument("--device", default="auto",
                   help="auto (cuda if torch sees a GPU, else cpu), cpu, cuda or cuda:N; under "
                   "torchrun, cuda gives each process the GPU of its LOCAL_RANK")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs/facet", help="output folder")
    o.add_argument("--resume", help="continue from this checkpoint (its .state.pt beside it)")
    o.add_argument("--no-plots", action="store_true", help="skip the parity plots")
    o.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    return p


def model_config(args: argparse.Namespace, data_elements: list[str]) -> FacetConfig:
    """The FacetConfig from --preset (name or JSON) and the command-line overrides."""
    overrides: dict[str, Any] = {}
    if args.r_max is not None:
        overrides["r_max"] = args.r_max
    if args.resid_init is not None:
        overrides["resid_init"] = args.resid_init
    if args.elements == "auto":
        elements = None
    else:
        elements = [e.strip() for e in args.elements.split(",") if e.strip()]
    if args.preset in PRESETS:
        return preset(args.preset, elements or data_elements, **overrides)
    path = Path(args.preset)
    if not path.exists():
        raise SystemExit(
            f"facet-train: --preset {args.preset!r} is neither a preset name "
            f"({', '.join(sorted(PRESETS))}) nor an existing JSON file"
        )
    d = json.loads(path.read_text())
    base = d.pop("preset", None)
    d.update(overrides)
    elements = elements or d.pop("elements", None) or data_elements
    d.pop("elements", None)
    if base is not None:
        return preset(base, elements, **d)
    return FacetConfig(elements=elements, **d)


def load_data(args: argparse.Namespace, keys: LabelKeys) -> tuple[Source, Source]:
    """Training and validation frames (``--valid``, or a seeded split of ``--train``)."""
    require_forces = args.forces_weight > 0
    train = load_source(args.train, keys, require_forces)
    if args.valid:
        return train, load_source(args.valid, keys, require_forces)
    tr, va = split_indices(source_size(train), args.valid_fraction, args.seed)
    return take(train, tr), take(train, va)


def init_reference(model, data: DataStatistics | Sequence[GraphFrame]) -> dict[str, float]:
    """Per-species energy shift from a least-squares fit of the training energies, the
    per-species scale from the RMS of the training forces, and a readout 10x smaller than its
    default init, so that the untrained model starts close to the fitted reference energies
    (measured: lower energy and stress errors early in training, same force error). ``data``:
    the training set's statistics, or its graphs."""
    stats = data if isinstance(data, DataStatistics) else statistics(data, model.num_species)
    mu = stats.reference_energies()
    rms = stats.forces_rms()
    with torch.no_grad():
        model.species_shift.copy_(torch.as_tensor(mu))
        if rms is not None and rms > 0:
            model.species_scale.fill_(rms)
        model.readout_weight.mul_(0.1)
    return {e: float(v) for e, v in zip(model.config.elements, mu, strict=True)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
        return 0
    except (DataError, TrainingError, DeviceError) as exc:
        print(f"facet-train: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train as asked (or only preprocess, with ``--preprocess``); returns the final validation
    metrics (the 'final' entry of metrics.json). Under torchrun, every process runs this."""
    keys = LabelKeys(args.energy_key, args.forces_key, args.stress_key)
    if args.preprocess:
        return preprocess(args, keys)
    rank, world, local_rank = distributed.environment()
    device = resolve_device(args.device, local_rank, world)
    parallel = distributed.start(device)
    try:
        return train(args, keys, device, parallel)
    finally:
        distributed.stop()


def preprocess(args: argparse.Namespace, keys: LabelKeys) -> dict[str, Any]:
    """``--preprocess DIR``: write the on-disk form of ``--train``; one process only."""
    if distributed.environment()[1] > 1:
        raise DataError("--preprocess is a one-process step: run it without torchrun")
    t0 = time.perf_counter()
    log = (lambda s: None) if args.quiet else print
    out = write_store(args.train, args.preprocess, keys, log=log)
    store = FrameStore(out)
    log(f"{out}: {len(store)} frames, {store.meta['num_atoms']} atoms, elements "
        f"{store.elements}, written in {time.perf_counter() - t0:.1f} s; train with "
        f"--train {out}")
    return dict(store.meta)


def train(args: argparse.Namespace, keys: LabelKeys, device: torch.device,
          parallel: Parallel) -> dict[str, Any]:
    """The training run of ``run`` on ``device``, as process ``parallel.rank``."""
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda s: None) if args.quiet or not parallel.is_main else print
    train_src, valid_src = load_data(args, keys)

    state = None
    if args.resume:
        state = load_state_file(state_path(args.resume))
        cfg = FacetConfig.from_dict(state["config"])
        dtype = getattr(torch, state["dtype"])
        if args.dtype != state["dtype"]:
            log(f"resuming in the checkpoint's dtype {state['dtype']} (not --dtype {args.dtype})")
    else:
        elements = sorted(set(source_elements(train_src)) | set(source_elements(valid_src)),
                          key=lambda e: ase.data.atomic_numbers[e])
        cfg = model_config(args, elements)
        dtype = getattr(torch, args.dtype)

    t0 = time.perf_counter()
    train_set = to_graphs(train_src, cfg, dtype)
    valid_set = to_graphs(valid_src, cfg, dtype)
    streamed = isinstance(train_set, StreamedGraphs)
    stats = sharded_statistics(train_set, len(cfg.elements), parallel)
    if isinstance(valid_set, StreamedGraphs):  # bad frames now, not after the first epoch
        for i in range(parallel.rank, len(valid_set), parallel.world_size):
            valid_set[i]
    log(f"{len(train_set)} training and {len(valid_set)} validation frames "
        f"({'streamed from disk' if streamed else 'in memory'}), graphs "
        f"{'checked' if streamed else 'built'} in {time.perf_counter() - t0:.1f} s; device "
        f"{device}, {parallel.world_size} process(es)")
    if args.stress_weight > 0 and not label_summary(train_set)[:, 2].any():
        log("note: no training frame has a stress label; the stress term is inactive")

    if state is None:
        if args.avg_num_neighbors is not None:
            cfg.avg_num_neighbors = float(args.avg_num_neighbors)
        else:
            cfg.avg_num_neighbors = round(stats.avg_num_neighbors, 4)
        torch.manual_seed(args.seed)
        model = build_model(cfg, dtype)
        reference = init_reference(model, stats)
    else:
        model = build_model(cfg, dtype)
        reference = state["meta"].get("reference_energies", {})
    log(f"model: {count_parameters(model)} parameters, elements {cfg.elements}, "
        f"r_max {cfg.r_max} Å, {cfg.num_interactions} interactions, "
        f"avg_num_neighbors {cfg.avg_num_neighbors:.2f}, {str(dtype).replace('torch.', '')}")

    options = TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, valid_batch_size=args.valid_batch_size,
        lr=args.lr, scheduler=args.scheduler, warmup_epochs=args.warmup_epochs,
        min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay,
        ema_decay=args.ema_decay, clip=args.clip, save_every=args.save_every, seed=args.seed,
        energy_weight=args.energy_weight, forces_weight=args.forces_weight,
        stress_weight=args.stress_weight, quiet=args.quiet,
    )
    meta = {
        "train_file": str(args.train),
        "valid_file": str(args.valid) if args.valid else None,
        "valid_fraction": None if args.valid else args.valid_fraction,
        "num_train": len(train_set),
        "num_valid": len(valid_set),
        "label_keys": [keys.energy, keys.forces, keys.stress],
        "reference_energies": reference,
        "avg_num_neighbors": cfg.avg_num_neighbors,
        "device": str(device),
        "processes": parallel.world_size,
        "streamed": streamed,
        "command": "facet-train " + " ".join(sys.argv[1:] if sys.argv else []),
    }
    trainer = Trainer(model, train_set, valid_set, options, Path(args.out), meta, log=log,
                      device=device, parallel=parallel)
    if state is not None:
        trainer.load_state(state, str(state_path(args.resume)))
        log(f"resumed from {args.resume} at epoch {trainer.epoch}, step {trainer.step}")
    trainer.fit()

    final = final_report(trainer, args)
    log(f"done in {time.perf_counter() - t_start:.0f} s; checkpoint {Path(args.out) / 'last.pt'}")
    return final


def final_report(trainer: Trainer, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the EMA weights on the validation set (or the training set without one), write
    the parity plots and the 'final' entry of metrics.json."""
    graphs = trainer.valid_set if len(trainer.valid_set) else trainer.train_set
    which = "valid" if len(trainer.valid_set) else "train"
    plots = not args.no_plots
    metrics, kept = trainer.evaluate(graphs, keep=plots)
    final = metrics.summary(which, trainer.options.weights)
    final = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in final.items()}
    final = {"set": which, "epoch": trainer.epoch, "step": trainer.step,
             "train_wall_time_s": round(trainer.elapsed, 1), **final}
    parity = trainer.parallel.gather(parity_arrays(kept)) if plots else None
    if not trainer.parallel.is_main:
        return final
    out = Path(args.out)
    path = out / "metrics.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary["final"] = final
    path.write_text(json.dumps(summary, indent=1))
    if parity is not None:
        from facet.train.plots import parity_plot

        e_ref, e_pred, f_ref, f_pred = (np.concatenate(a) for a in zip(*parity, strict=True))
        if len(e_ref):
            parity_plot(e_ref, e_pred, out / "energy.png", f"energy per atom ({which})",
                        "eV/atom", scale=1000.0)
            parity_plot(f_ref, f_pred, out / "forces.png", f"force components ({which})",
                        "eV/Å", scale=1000.0)
    return final


def parity_arrays(kept: list) -> tuple[np.ndarray, ...]:
    """Reference and predicted energies per atom (eV/atom) and force components (eV/Å) of
    evaluated ``(batch, prediction)`` pairs, as NumPy arrays (copied off the device)."""

    def cat(xs: list[torch.Tensor]) -> np.ndarray:
        return torch.cat(xs).double().cpu().numpy() if xs else np.zeros(0)

    return (
        cat([b.energy / b.num_atoms for b, _ in kept]),
        cat([p.energy / b.num_atoms for b, p in kept]),
        cat([b.forces[b.forces_mask].reshape(-1) for b, _ in kept]),
        cat([p.forces[b.forces_mask].reshape(-1) for b, p in kept]),
    )


if __name__ == "__main__":
    sys.exit(main())
