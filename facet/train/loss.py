"""Weighted energy + force + stress loss and the error metrics reported per epoch.

Loss = w_E * MSE(E/atom) + w_F * MSE(force components) + w_S * MSE(stress components), in
eV^2/atom^2, eV^2/Å^2 and eV^2/Å^6. Frames without a force or stress label are masked out of that
term. Metrics are accumulated over an epoch as sums, so they do not depend on the batching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from facet.train.data import Batch
from facet.train.predict import Prediction


@dataclass(frozen=True)
class LossWeights:
    energy: float = 1.0
    forces: float = 10.0
    stress: float = 1.0


def _masked_sq(diff: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    sel = diff[mask]
    return sel.pow(2).sum(), int(sel.numel())


def loss_fn(pred: Prediction, batch: Batch, w: LossWeights) -> torch.Tensor:
    """The training loss of one batch (a scalar tensor)."""
    e_diff = (pred.energy - batch.energy) / batch.num_atoms
    loss = w.energy * e_diff.pow(2).mean()
    if w.forces > 0:
        sq, n = _masked_sq(pred.forces - batch.forces, batch.forces_mask)
        if n:
            loss = loss + w.forces * sq / n
    if w.stress > 0:
        sq, n = _masked_sq(pred.stress - batch.stress, batch.stress_mask)
        if n:
            loss = loss + w.stress * sq / n
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

    def update(self, pred: Prediction, batch: Batch, loss: float | None = None) -> None:
        with torch.no_grad():
            e = ((pred.energy - batch.energy) / batch.num_atoms).double()
            self.e_abs += float(e.abs().sum())
            self.e_sq += float(e.pow(2).sum())
            self.n_e += int(e.numel())
            f = (pred.forces - batch.forces)[batch.forces_mask].double()
            self.f_abs += float(f.abs().sum())
            self.f_sq += float(f.pow(2).sum())
            self.n_f += int(f.numel())
            s = (pred.stress - batch.stress)[batch.stress_mask].double()
            self.s_abs += float(s.abs().sum())
            self.s_sq += float(s.pow(2).sum())
            self.n_s += int(s.numel())
        if loss is not None:
            self.loss_sum += float(loss)
            self.n_batches += 1

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
