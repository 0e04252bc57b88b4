"""Facet: E(3)-equivariant interatomic potentials with learnable radial splines and
spherical-grid node mixing (Miklaucic et al. 2025, arXiv 2509.08418), for ASE and LAMMPS.

The names below are imported on first use, so ``import facet`` itself is cheap: a LAMMPS rank
that only unpickles the deployed ML-IAP object never loads ASE, vesin or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "facet.errors",
    "FacetError": "facet.errors",
    "FacetInputError": "facet.errors",
    "FacetLAMMPSError": "facet.errors",
    "load_model": "facet.checkpoint",
    "save_model": "facet.checkpoint",
    "FacetConfig": "facet.config",
    "facet_s": "facet.config",
    "facet_tiny": "facet.config",
    "preset": "facet.config",
    "build_graph": "facet.graph",
    "Facet": "facet.model",
    "build_model": "facet.model",
    "count_parameters": "facet.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'facet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
