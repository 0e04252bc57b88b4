"""One-file checkpoints: config, weights, element list, cutoff, layers and provenance.

The file is a ``torch.save`` of a plain dict (tensors, str, numbers only), read back with
``weights_only=True``: loading a checkpoint never runs code.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

import torch

from facet.config import FacetConfig
from facet.errors import CheckpointError
from facet.model import Facet, build_model, copy_parameters

FORMAT = "facet-checkpoint"
FORMAT_VERSION = 1


def _version() -> str:
    from facet import __version__

    return __version__


def save_model(
    model: Facet, path: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` with provenance; ``extra`` (e.g. training metadata) is stored
    under ``provenance['training']``. Returns the path."""
    path = Path(path)
    cfg = model.config
    dtype = next(model.parameters()).dtype
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        # parameters only: constants (CG coefficients, grid matrices) are rebuilt exactly
        "state_dict": {k: v.detach().cpu() for k, v in model.named_parameters()},
        "elements": list(cfg.elements),
        "r_max": float(cfg.r_max),
        "num_interactions": int(cfg.num_interactions),
        "dtype": str(dtype).replace("torch.", ""),
        "provenance": {
            "facet_version": _version(),
            "torch_version": str(torch.__version__),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "host": platform.node(),
            "training": extra or {},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint dict; clear errors for missing/truncated/foreign files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file {path} is empty")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip errors, pickle errors, EOF ...
        raise CheckpointError(
            f"cannot read {path} as a Facet checkpoint (truncated, corrupt or another format): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a Facet checkpoint (no 'format: {FORMAT}' entry); "
            "pass a file written by facet.save_model / facet-train"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}, newer than this facet "
            f"({FORMAT_VERSION}); upgrade facet"
        )
    for key in ("config", "state_dict", "elements", "r_max"):
        if key not in payload:
            raise CheckpointError(f"{path} is missing the '{key}' entry")
    return payload


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None) -> Facet:
    """Rebuild the model stored in ``path`` (in its stored dtype unless ``dtype`` is given)."""
    payload = read_checkpoint(path)
    cfg = FacetConfig.from_dict(payload["config"])
    stored = getattr(torch, payload.get("dtype", "float32"))
    model = build_model(cfg, dtype or stored)
    problems = copy_parameters(model, payload["state_dict"])
    if problems:
        raise CheckpointError(
            f"{path}: stored weights do not match the stored config (e.g. {problems[:3]})"
        )
    model.eval()
    model.provenance = payload.get("provenance", {})  # type: ignore[attr-defined]
    return model
