"""Weighted energy + force + stress loss and the error metrics reported per epoch.

Loss = w_E * MSE(E/atom) + w_F * MSE(force components) + w_S * MSE(stress components), in
eV^2/atom^2, eV^2/Å^2 and eV^2/Å^6. Frames without a force or stress label are masked out of that
term. Metrics are accumulated over an epoch as sums, so they do not depend on the batching.

Data-parallel training splits one global batch into shards. Each mean is then a sum over the
shard divided by the count over the *global* batch (``LossNorm``), so that the shards' losses
(and their gradients) add up exactly to the loss of the global batch, whatever the number of
structures, atoms or labels each shard holds. A mean of per-shard means would not: it weights a
force component of a small shard more than one of a large shard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from facet.train.data import Batch
from facet.train.predict import Prediction


@dataclass(frozen=True)
class LossWeights:
    energy: float = 1.0
    forces: float = 10.0
    stress: float = 1.0


@dataclass(frozen=True)
class LossNorm:
    """The denominators of the loss's three means: structures, labelled force components and
    labelled stress components of the (global) batch."""

    structures: int
    force_components: int
    stress_components: int

    @classmethod
    def of_batch(cls, batch: Batch) -> LossNorm:
        """The counts of ``batch`` itself (one process, or a shard taken as the whole)."""
        return cls(batch.num_structures, 3 * int(batch.forces_mask.sum()),
                   6 * int(batch.stress_mask.sum()))

    @classmethod
    def of_frames(cls, num_atoms: Sequence[int] | np.ndarray, has_forces: Sequence[bool] |
                  np.ndarray, has_stress: Sequence[bool] | np.ndarray) -> LossNorm:
        """The counts of a global batch from its frames' sizes and label flags (known to every
        process without building the other shards' graphs)."""
        n = np.asarray(num_atoms, dtype=np.int64)
        return cls(len(n), 3 * int(n[np.asarray(has_forces, dtype=bool)].sum()),
                   6 * int(np.asarray(has_stress, dtype=bool).sum()))


def _masked_sq(diff: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return diff[mask].pow(2).sum()


def loss_fn(
    pred: Prediction, batch: Batch, w: LossWeights, norm: LossNorm | None = None
) -> torch.Tensor:
    """The training loss of ``batch`` (a scalar tensor). With ``norm`` from the global batch
    that ``batch`` is a shard of, this is the shard's share: the shares of all shards sum to
    the global batch's loss. Default: ``batch``'s own counts (the loss of ``batch`` alone)."""
    norm = LossNorm.of_batch(batch) if norm is None else norm
    e_diff = (pred.energy - batch.energy) / batch.num_atoms
    loss = w.energy * e_diff.pow(2).sum() / max(norm.structures, 1)
    if w.forces > 0 and norm.force_components:
        sq = _masked_sq(pred.forces - batch.forces, batch.forces_mask)
        loss = loss + w.forces * sq / norm.force_components
    if w.stress > 0 and norm.stress_components:
        sq = _masked_sq(pred.stress - batch.stress, batch.stress_mask)
        loss = loss + w.stress * sq / norm.stress_components
    return loss


@dataclass
class Metrics:
    """Running sums of absolute and squared errors over an epoch."""

    e_abs: float = 0.0
    e_sq: float = 0.0
    n_e: int = 0
    f_abs: float = 0.0
    f_sq: float = 0.0
    n_f: int = 0
    s_abs: float = 0.0
    s_sq: float = 0.0
    n_s: int = 0
    loss_sum: float = 0.0
    n_batches: int = 0
    extra: dict = field(default_factory=dict)

    _ERRORS = ("e_abs", "e_sq", "n_e", "f_abs", "f_sq", "n_f", "s_abs", "s_sq", "n_s")

    def update(self, pred: Prediction, batch: Batch, loss: float | None = None) -> None:
        """Add the errors of ``batch`` (and, if given, one step's loss)."""
        with torch.no_grad():
            e = ((pred.energy - batch.energy) / batch.num_atoms).double()
            f = (pred.forces - batch.forces)[batch.forces_mask].double()
            s = (pred.stress - batch.stress)[batch.stress_mask].double()
            sums = torch.stack([e.abs().sum(), e.pow(2).sum(), f.abs().sum(), f.pow(2).sum(),
                                s.abs().sum(), s.pow(2).sum()]).tolist()  # one device sync
        self.e_abs += sums[0]
        self.e_sq += sums[1]
        self.n_e += int(e.numel())
        self.f_abs += sums[2]
        self.f_sq += sums[3]
        self.n_f += int(f.numel())
        self.s_abs += sums[4]
        self.s_sq += sums[5]
        self.n_s += int(s.numel())
        if loss is not None:
            self.add_loss(loss)

    def add_loss(self, loss: float) -> None:
        """Add one step's loss (the global batch's)."""
        self.loss_sum += float(loss)
        self.n_batches += 1

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the error sums over processes that each saw a shard (``all_reduce_sum`` sums a
        float64 vector over them). The step losses are not summed: every process already holds
        the global batch's loss of every step."""
        v = all_reduce_sum(torch.tensor([getattr(self, k) for k in self._ERRORS],
                                        dtype=torch.float64))
        for k, x in zip(self._ERRORS, v.tolist(), strict=True):
            setattr(self, k, int(round(x)) if k.startswith("n_") else x)

    def loss(self, w: LossWeights) -> float:
        """The loss over the whole set (MSEs over all frames), independent of the batching."""
        total = w.energy * self.e_sq / max(self.n_e, 1)
        if w.forces > 0 and self.n_f:
            total += w.forces * self.f_sq / self.n_f
        if w.stress > 0 and self.n_s:
            total += w.stress * self.s_sq / self.n_s
        return total

    def summary(self, prefix: str, w: LossWeights) -> dict[str, float]:
        """MAEs and RMSEs in meV/atom, meV/Å, meV/Å^3 and the loss."""

        def mae(a: float, n: int) -> float:
            return 1000.0 * a / n if n else float("nan")

        def rmse(a: float, n: int) -> float:
            return 1000.0 * (a / n) ** 0.5 if n else float("nan")

        return {
            f"{prefix}_loss": (
                self.loss_sum / self.n_batches if self.n_batches else self.loss(w)
            ),
            f"{prefix}_e_mae_mev_atom": mae(self.e_abs, self.n_e),
            f"{prefix}_e_rmse_mev_atom": rmse(self.e_sq, self.n_e),
            f"{prefix}_f_mae_mev_a": mae(self.f_abs, self.n_f),
            f"{prefix}_f_rmse_mev_a": rmse(self.f_sq, self.n_f),
            f"{prefix}_s_mae_mev_a3": mae(self.s_abs, self.n_s),
            f"{prefix}_s_rmse_mev_a3": rmse(self.s_sq, self.n_s),
        }
