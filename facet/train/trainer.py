"""The training loop: AdamW, warm-up + cosine learning rate, gradient clipping, EMA weights,
validation every epoch, checkpoints every N epochs, exact resume.

Files written in ``out``:
    ``last.pt``        deployable checkpoint (``facet.save_model``, EMA weights), every
                       ``save_every`` epochs and at the end;
    ``last.state.pt``  what resuming needs beside it: raw weights, optimiser, scheduler, EMA,
                       epoch/step counters, metric history, split;
    ``best.pt``        deployable checkpoint with the lowest validation loss so far;
    ``metrics.json``, ``metrics.csv``   per-epoch losses and errors.

Resuming (``Trainer.load_state``) restores everything, and the frame order of epoch ``k`` is a
function of (seed, k) only, so an interrupted and resumed run takes the same steps as an
uninterrupted one.

Devices and processes: the model, the batches, the loss and the EMA live on ``device`` (graphs
are built and collated on the CPU, then moved); files always hold CPU tensors, so a run trained
on a GPU loads anywhere. With several processes (``parallel``, see ``facet.train.distributed``)
every process takes its shard of each global batch, the gradients are summed over them, and only
rank 0 writes files and logs; validation metrics are summed over the processes' shards.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facet.checkpoint import save_model
from facet.model import Facet
from facet.train.data import Batch, GraphFrame, batches, collate, label_summary
from facet.train.distributed import Parallel, reduce_gradients, shard
from facet.train.ema import EMA
from facet.train.loss import LossNorm, LossWeights, Metrics, loss_fn
from facet.train.predict import Prediction, predict

STATE_FORMAT = "facet-train-state"
STATE_VERSION = 1


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, unusable resume state, ...)."""


@dataclass
class TrainOptions:
    epochs: int = 100
    batch_size: int = 8
    valid_batch_size: int = 16
    lr: float = 3e-3
    scheduler: str = "cosine"  # "cosine" (after a linear warm-up) or "constant"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 1e-5  # AdamW, only on weight matrices
    ema_decay: float = 0.99
    clip: float = 10.0  # max gradient norm; 0 disables
    save_every: int = 5
    seed: int = 0
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 1.0
    quiet: bool = False

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.energy_weight, self.forces_weight, self.stress_weight)

    def __post_init__(self) -> None:
        if self.scheduler not in ("cosine", "constant"):
            raise ValueError(f"scheduler must be 'cosine' or 'constant', not {self.scheduler!r}")
        for name in ("epochs", "batch_size", "valid_batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if min(self.energy_weight, self.forces_weight, self.stress_weight) < 0:
            raise ValueError("loss weights must be >= 0")


def state_path(checkpoint: str | os.PathLike) -> Path:
    """The training-state file that belongs to a checkpoint: ``last.pt`` -> ``last.state.pt``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".state.pt")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: not on embeddings, per-species scale/shift, gains,
    spline tables' biases or other vectors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim >= 2 and name != "embedding" and "species_" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@dataclass
class Trainer:
    model: Facet
    train_set: Sequence[GraphFrame]
    valid_set: Sequence[GraphFrame]
    options: TrainOptions
    out: Path
    meta: dict[str, Any] = field(default_factory=dict)  # stored in the checkpoints' provenance
    log: Callable[[str], None] | None = None
    device: torch.device | str = "cpu"
    parallel: Parallel = field(default_factory=Parallel)

    def __post_init__(self) -> None:
        if not len(self.train_set):
            raise TrainingError("the training set is empty")
        self.out = Path(self.out)
        o = self.options
        self.device = torch.device(self.device)
        self.model.to(self.device)
        self.parallel.broadcast_parameters(self.model)  # the same start on every process
        self._train_info = label_summary(self.train_set)  # [F, 3]: atoms, forces?, stress?
        self._valid_info = label_summary(self.valid_set)
        self.steps_per_epoch = math.ceil(len(self.train_set) / o.batch_size)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay), lr=o.lr, betas=(0.9, 0.999), eps=1e-8
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.ema = EMA(self.model, o.ema_decay)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimiser steps
        self.history: list[dict[str, Any]] = []
        self.best_valid = math.inf
        self.elapsed = 0.0  # training wall time over all sessions (s)
        if self.log is None or not self.parallel.is_main:
            self.log = (lambda s: None) if o.quiet or not self.parallel.is_main else print

    # ----------------------------------------------------------------- schedule
    def lr_factor(self, step: int) -> float:
        o = self.options
        if o.scheduler == "constant":
            return 1.0
        total = max(1, o.epochs * self.steps_per_epoch)
        warm = max(1, int(o.warmup_epochs * self.steps_per_epoch))
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Frame order of epoch ``epoch`` (1-based): a function of (seed, epoch) only (an int64
        array: 8 bytes per frame however large the set)."""
        g = torch.Generator().manual_seed(self.options.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_set), generator=g).numpy()

    # ----------------------------------------------------------------- steps
    def train_step(self, indices: Sequence[int]
                   ) -> tuple[float, Batch | None, Prediction | None]:
        """One optimiser step on the global batch ``indices`` (training-set frame numbers).

        This process computes its shard (all of it with one process): the loss normalised by
        the global batch's counts, its gradients, then the sum of both over the processes.
        Returns the global batch's loss and this process's batch and predictions (None for an
        empty shard)."""
        self.model.train()
        info = self._train_info[np.asarray(indices, dtype=np.int64)]
        norm = LossNorm.of_frames(info[:, 0], info[:, 1], info[:, 2])
        mine = shard(indices, info[:, 0], self.parallel.rank, self.parallel.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        batch = pred = None
        if mine:
            batch = collate([self.train_set[i] for i in mine]).to(self.device)
            pred = predict(self.model, batch, create_graph=True)
            share = loss_fn(pred, batch, self.options.weights, norm)
            share.backward()
        else:  # a global batch smaller than the number of processes
            share = torch.zeros((), dtype=self.dtype, device=self.device)
        loss = float(reduce_gradients(self.model.parameters(), share, self.parallel))
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} at step {self.step + 1}: lower --lr or --clip"
            )
        if self.options.clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return loss, batch, pred

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def train_epoch(self) -> Metrics:
        from tqdm.auto import tqdm

        epoch = self.epoch + 1
        metrics = Metrics()
        order = self.epoch_order(epoch)
        size = self.options.batch_size
        quiet = self.options.quiet or not sys.stderr.isatty() or not self.parallel.is_main
        bar = tqdm(
            (order[k : k + size] for k in range(0, len(order), size)),
            total=self.steps_per_epoch,
            desc=f"epoch {epoch}/{self.options.epochs}",
            disable=quiet,
            leave=False,
            dynamic_ncols=True,
        )
        for idx in bar:
            loss, batch, pred = self.train_step(idx)
            metrics.add_loss(loss)
            if batch is not None:
                metrics.update(pred, batch)
            bar.set_postfix(loss=f"{loss:.4g}")
        if self.parallel.active:
            metrics.reduce(self.parallel.all_reduce_sum)
        self.epoch = epoch
        return metrics

    def evaluate(
        self, graphs: Sequence[GraphFrame] | None = None, ema: bool = True,
        keep: bool = False,
    ) -> tuple[Metrics, list[tuple[Batch, Prediction]]]:
        """Errors of the EMA (or raw) weights on ``graphs`` (default: the validation set),
        summed over the processes, each of which evaluates its shard of ``graphs``. ``keep``
        returns this process's batches and predictions too (for parity plots)."""
        if graphs is None:
            graphs, info = self.valid_set, self._valid_info
        else:
            info = label_summary(graphs)
        mine = shard(range(len(graphs)), info[:, 0], self.parallel.rank,
                     self.parallel.world_size)
        metrics = Metrics()
        kept = []
        self.model.eval()
        ctx = self.ema.applied(self.model) if ema else _null()
        with ctx:
            for idx in batches(graphs, self.options.valid_batch_size, mine):
                batch = collate([graphs[i] for i in idx]).to(self.device)
                pred = predict(self.model, batch, create_graph=False)
                metrics.update(pred, batch)
                if keep:
                    kept.append((batch, pred))
        if self.parallel.active:
            metrics.reduce(self.parallel.all_reduce_sum)
        return metrics, kept

    # ----------------------------------------------------------------- loop
    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train until ``options.epochs`` (or ``until``, if smaller) epochs are complete; returns
        the metric history. The schedule always follows ``options.epochs``."""
        o = self.options
        if self.parallel.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        w = o.weights
        stop = o.epochs if until is None else min(until, o.epochs)
        while self.epoch < stop:
            t0, cpu0 = time.perf_counter(), time.process_time()
            train_metrics = self.train_epoch()
            t_train = time.perf_counter() - t0
            cpu = self.parallel.all_reduce_sum(
                torch.tensor([time.process_time() - cpu0], dtype=torch.float64))
            row: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                   "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(train_metrics.summary("train", w))
            if self.valid_set:
                vm, _ = self.evaluate()
                row.update(vm.summary("valid", w))
                if self.parallel.is_main:
                    row.update(self.rotation_error())
            self.elapsed += time.perf_counter() - t0
            row["time_s"] = round(self.elapsed, 2)
            row["train_epoch_s"] = round(t_train, 3)  # this epoch's training steps alone
            row["train_epoch_cpu_s"] = round(float(cpu), 3)  # their CPU time, all processes
            self.history.append(row)
            self.log(self.format_row(row))
            if self.valid_set and row["valid_loss"] < self.best_valid:
                self.best_valid = row["valid_loss"]
                self.save_checkpoint("best.pt", with_state=False)
            if self.epoch % o.save_every == 0 or self.epoch == o.epochs:
                self.save_checkpoint("last.pt")
            self.write_metrics()
        return self.history

    def rotation_error(self, n_frames: int = 2) -> dict[str, float]:
        """Rotation/inversion error of the EMA weights on the first ``n_frames`` validation
        frames (``facet.symmetry``, float64): the S2 grid's aliasing as training shapes it."""
        from facet.symmetry import graph_symmetry_error

        de = df = 0.0
        with self.ema.applied(self.model):
            for i in range(min(n_frames, len(self.valid_set))):
                g = self.valid_set[i]
                err = graph_symmetry_error(self.model, g.species, g.centre, g.neighbour, g.rij)
                de, df = max(de, err.energy_per_atom), max(df, err.forces)
        return {"valid_rot_e_ev_atom": de, "valid_rot_f_ev_a": df}

    def format_row(self, row: dict[str, Any]) -> str:
        s = (f"epoch {row['epoch']:4d}/{self.options.epochs} step {row['step']:6d} "
             f"lr {row['lr']:.2e} train loss {row['train_loss']:.4g}")
        if "valid_loss" in row:
            s += (f" | valid loss {row['valid_loss']:.4g} E {row['valid_e_mae_mev_atom']:.2f} "
                  f"meV/atom F {row['valid_f_mae_mev_a']:.1f} meV/Å "
                  f"S {row['valid_s_mae_mev_a3']:.3f} meV/Å^3")
        if "valid_rot_f_ev_a" in row:
            s += f" rot F {row['valid_rot_f_ev_a']:.1e} eV/Å"
        return s + f" | {row['time_s']:.0f} s"

    # ----------------------------------------------------------------- files
    def write_metrics(self) -> None:
        """``metrics.json`` and ``metrics.csv`` (rank 0 only)."""
        if not self.parallel.is_main:
            return
        summary = {"epochs": _no_nan(self.history), "meta": _jsonable(self.meta),
                   "options": dataclasses.asdict(self.options)}
        (self.out / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        with open(self.out / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)

    def provenance(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return _jsonable({
            **self.meta,
            "options": dataclasses.asdict(self.options),
            "epoch": self.epoch,
            "step": self.step,
            "train_wall_time_s": round(self.elapsed, 1),
            "last_metrics": last,
            "weights": "ema",
        })

    def save_checkpoint(self, name: str, with_state: bool = True) -> Path:
        """Write ``name`` (EMA weights, a plain ``facet.save_model`` file) and, with
        ``with_state``, its training state beside it. Only rank 0 writes; every file holds
        CPU tensors."""
        path = self.out / name
        if not self.parallel.is_main:
            return path
        with self.ema.applied(self.model):
            save_model(self.model, path, extra=self.provenance())
        if with_state:
            tmp = state_path(path).with_name(state_path(path).name + ".tmp")
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, state_path(path))
        return path

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "config": self.model.config.to_dict(),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "model": {k: p.detach().cpu().clone() for k, p in self.model.named_parameters()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_valid": self.best_valid,
            "elapsed_s": self.elapsed,
            "history": _jsonable(self.history),
            "meta": _jsonable(self.meta),
            "num_train": len(self.train_set),
            "num_valid": len(self.valid_set),
            "batch_size": self.options.batch_size,
        }

    def load_state(self, state: dict[str, Any], source: str = "state") -> None:
        """Restore a ``state_dict()`` (raw weights, optimiser, scheduler, EMA, counters)."""
        if state.get("format") != STATE_FORMAT:
            raise TrainingError(f"{source} is not a facet-train state file")
        if state["num_train"] != len(self.train_set) or state["num_valid"] != len(self.valid_set):
            raise TrainingError(
                f"{source} was written for {state['num_train']} training and "
                f"{state['num_valid']} validation frames, but this run has "
                f"{len(self.train_set)} and {len(self.valid_set)}: resume with the same data, "
                "--valid-fraction and --seed"
            )
        if state["batch_size"] != self.options.batch_size:
            raise TrainingError(
                f"{source} used --batch-size {state['batch_size']}; resume with the same value"
            )
        params = dict(self.model.named_parameters())
        if set(params) != set(state["model"]):
            raise TrainingError(f"{source}: stored weights do not match the model")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state["model"][k])
        self.optimizer.load_state_dict(state["optimizer"])  # moves its state to the device
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.best_valid = float(state["best_valid"])
        self.elapsed = float(state["elapsed_s"])
        self.history = list(state["history"])


def load_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training-state file (``weights_only``: never runs code)."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(
            f"cannot resume: {path} does not exist (it is written beside the checkpoint by "
            "facet-train every --save-every epochs)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def _to_cpu(x: Any) -> Any:
    """``x`` with every tensor (in nested dicts and lists) copied to the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _no_nan(x: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def _jsonable(x: Any) -> Any:
    """Plain JSON-able (and torch weights_only-loadable) copy: dicts, lists, str, numbers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)
