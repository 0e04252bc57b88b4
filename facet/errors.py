"""The exceptions Facet raises on bad input, one family under ``FacetError``.

Catch ``FacetError`` to handle any of them; each message says what is wrong and how to fix it.
"""

from __future__ import annotations


class FacetError(Exception):
    """Base class of every error Facet raises for bad input or configuration."""


class CheckpointError(FacetError, RuntimeError):
    """A checkpoint file is missing, unreadable or not a Facet checkpoint."""


class FacetInputError(FacetError, ValueError):
    """A structure the model cannot evaluate (unknown element, overlapping atoms, ...)."""


class FacetLAMMPSError(FacetError, RuntimeError):
    """A configuration error detected inside LAMMPS (LAMMPS prints it before it stops)."""
