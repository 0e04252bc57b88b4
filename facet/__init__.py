"""Facet: E(3)-equivariant interatomic potentials with learnable radial splines and
spherical-grid node mixing (Miklaucic et al. 2025, arXiv 2509.08418), for ASE and LAMMPS."""

__version__ = "0.1.0"

from facet.checkpoint import CheckpointError, load_model, save_model  # noqa: E402
from facet.config import FacetConfig, facet_s, facet_tiny, preset  # noqa: E402
from facet.graph import FacetInputError, build_graph  # noqa: E402
from facet.model import Facet, build_model, count_parameters  # noqa: E402

__all__ = [
    "CheckpointError",
    "Facet",
    "FacetConfig",
    "FacetInputError",
    "build_graph",
    "build_model",
    "count_parameters",
    "facet_s",
    "facet_tiny",
    "load_model",
    "preset",
    "save_model",
]
