"""Radius graphs from ASE ``Atoms`` (periodic or not, any cell shape) with vesin.

Edges are directed and listed both ways (full list): centre i, neighbour j, and the periodic shift
S (integers) such that ``r_ij = x_j - x_i + S @ cell`` (Å).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from ase import Atoms
from vesin import NeighborList

from facet.errors import FacetInputError


@dataclass
class Graph:
    """A structure as the model sees it.

    Attributes:
        species: ``[n]`` int64 indices into the model's element list.
        centre, neighbour: ``[n_edges]`` int64 edge endpoints (i, j).
        shifts: ``[n_edges, 3]`` float64 periodic image shifts in Å (``S @ cell``).
        positions: ``[n, 3]`` float64 (Å).
        cell: ``[3, 3]`` float64 (Å), rows are lattice vectors.
        pbc: ``[3]`` bool.
    """

    species: np.ndarray
    centre: np.ndarray
    neighbour: np.ndarray
    shifts: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray

    @cached_property
    def rij(self) -> np.ndarray:
        """``[n_edges, 3]`` float64 edge vectors ``x_j - x_i + S @ cell`` (Å), computed once."""
        return self.positions[self.neighbour] - self.positions[self.centre] + self.shifts

    @property
    def num_atoms(self) -> int:
        return len(self.species)


def species_indices(symbols: list[str], elements: list[str]) -> np.ndarray:
    """Map chemical symbols to model species indices; unknown elements raise a clear error."""
    index = {e: k for k, e in enumerate(elements)}
    missing = sorted({s for s in symbols if s not in index})
    if missing:
        raise FacetInputError(
            f"the structure contains element(s) {missing} that the model does not know; "
            f"it was trained on {list(elements)}"
        )
    return np.fromiter((index[s] for s in symbols), dtype=np.int64, count=len(symbols))


def check_min_distance(rij: np.ndarray, centre: np.ndarray, neighbour: np.ndarray, d_min: float):
    """Raise ``FacetInputError`` if any pair is closer than ``d_min`` (Å)."""
    if len(rij) == 0:
        return
    d2 = np.einsum("ij,ij->i", rij, rij)
    k = int(np.argmin(d2))
    if d2[k] < d_min * d_min:
        raise FacetInputError(
            f"atoms {int(centre[k])} and {int(neighbour[k])} are {np.sqrt(d2[k]):.4g} Å apart, "
            f"closer than the model's minimum distance {d_min} Å: overlapping or duplicated "
            "atoms (check the structure, e.g. wrapped duplicates or a wrong cell)"
        )


def build_graph(
    atoms: Atoms, elements: list[str], r_max: float, min_distance: float = 0.1
) -> Graph:
    """Radius graph of ``atoms`` at cutoff ``r_max`` (Å), full neighbour list, with vesin."""
    species = species_indices(atoms.get_chemical_symbols(), elements)
    positions = np.ascontiguousarray(atoms.get_positions(), dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-12:
        raise FacetInputError("periodic structure with a degenerate (zero-volume) cell")
    n = len(atoms)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Graph(species, empty, empty, np.zeros((0, 3)), positions, cell, pbc)
    box = cell if pbc.any() else np.zeros((3, 3))
    nl = NeighborList(cutoff=float(r_max), full_list=True)
    i, j, s = nl.compute(points=positions, box=box, periodic=pbc, quantities="ijS", copy=True)
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    shifts = s.astype(np.float64) @ cell
    graph = Graph(species, i, j, shifts, positions, cell, pbc)
    check_min_distance(graph.rij, i, j, min_distance)
    return graph
