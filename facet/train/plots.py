"""Parity plots (PNG, matplotlib Agg): predicted vs reference energy per atom and force
components."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def parity_plot(
    ref: np.ndarray, pred: np.ndarray, path: str | os.PathLike, title: str, unit: str,
    scale: float = 1.0,
) -> Path:
    """Scatter ``pred`` against ``ref`` with the diagonal, MAE and RMSE (``scale`` multiplies the
    errors shown in the legend, e.g. 1000 for meV)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = np.asarray(ref, dtype=float).ravel()
    pred = np.asarray(pred, dtype=float).ravel()
    err = pred - ref
    mae = scale * np.abs(err).mean() if len(err) else float("nan")
    rmse = scale * np.sqrt((err**2).mean()) if len(err) else float("nan")
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(ref, pred, s=4, alpha=0.5, lw=0)
    if len(ref):
        lo, hi = min(ref.min(), pred.min()), max(ref.max(), pred.max())
        pad = 0.03 * (hi - lo + 1e-12)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k-", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"reference ({unit})")
    ax.set_ylabel(f"Facet ({unit})")
    unit_err = "m" + unit if scale == 1000.0 else unit
    ax.set_title(f"{title}\nMAE {mae:.3g} {unit_err}, RMSE {rmse:.3g} {unit_err}", fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
