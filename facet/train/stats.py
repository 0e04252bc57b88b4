"""Statistics of a training set that set up a model: the mean neighbour count, per-species
reference energies and the force RMS (``sharded_statistics``: shared among processes).

They are accumulated as sums, one frame at a time (``DataStatistics.add``), so a data set
streamed from disk never has to be in memory, and the sums of several processes' shards add up
(``vector``/``from_vector`` for an all-reduce) to those of the whole set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from facet.train.data import GraphFrame
from facet.train.distributed import Parallel


@dataclass
class DataStatistics:
    """Running sums over frames. ``gram`` = sum over frames of ``c c^T`` and ``counts_energy`` =
    sum of ``c E`` (``c``: atoms of each species in a frame, ``E``: its energy in eV): the
    normal equations of the per-species energy fit, of fixed size whatever the number of
    frames."""

    num_species: int
    num_frames: int = 0
    num_atoms: int = 0
    num_edges: int = 0
    gram: np.ndarray = field(init=False)  # [S, S]
    counts_energy: np.ndarray = field(init=False)  # [S] eV
    forces_sq: float = 0.0  # sum of squared force components, eV^2/Å^2
    forces_n: int = 0  # number of force components

    def __post_init__(self) -> None:
        self.gram = np.zeros((self.num_species, self.num_species))
        self.counts_energy = np.zeros(self.num_species)

    def add(self, g: GraphFrame) -> None:
        """Accumulate one frame."""
        c = np.bincount(g.species.numpy(), minlength=self.num_species).astype(np.float64)
        self.num_frames += 1
        self.num_atoms += g.num_atoms
        self.num_edges += int(g.centre.shape[0])
        self.gram += np.outer(c, c)
        self.counts_energy += c * g.energy
        if g.forces is not None:
            self.forces_sq += float(g.forces.double().pow(2).sum())
            self.forces_n += int(g.forces.numel())

    # ------------------------------------------------------------ results
    @property
    def avg_num_neighbors(self) -> float:
        """Mean number of neighbours within r_max per atom (edges / atoms)."""
        return self.num_edges / max(self.num_atoms, 1)

    def reference_energies(self) -> np.ndarray:
        """Per-species energies (eV/atom) minimising ``sum_s (E_s - sum_Z n_sZ mu_Z)^2`` over
        the frames (the minimum-norm least-squares solution; species absent from the data get
        0)."""
        mu, *_ = np.linalg.lstsq(self.gram, self.counts_energy, rcond=None)
        mu[np.diag(self.gram) == 0] = 0.0
        return mu

    def forces_rms(self) -> float | None:
        """Root mean square of the force components (eV/Å), or None without forces."""
        return (self.forces_sq / self.forces_n) ** 0.5 if self.forces_n else None

    # ------------------------------------------------------------ reduction
    def vector(self) -> torch.Tensor:
        """All sums as one float64 vector (integer counts are exact up to 2^53)."""
        head = [self.num_frames, self.num_atoms, self.num_edges, self.forces_sq, self.forces_n]
        return torch.from_numpy(np.concatenate(
            [np.asarray(head, dtype=np.float64), self.gram.ravel(), self.counts_energy]
        ))

    @classmethod
    def from_vector(cls, num_species: int, v: torch.Tensor) -> DataStatistics:
        """The inverse of ``vector`` (e.g. after summing the vectors of several shards)."""
        x = v.double().cpu().numpy()
        s = cls(num_species)
        s.num_frames, s.num_atoms, s.num_edges = (int(round(y)) for y in x[:3])
        s.forces_sq, s.forces_n = float(x[3]), int(round(x[4]))
        s.gram = x[5 : 5 + num_species**2].reshape(num_species, num_species).copy()
        s.counts_energy = x[5 + num_species**2 :].copy()
        return s


def statistics(graphs: Iterable[GraphFrame], num_species: int) -> DataStatistics:
    """The sums over ``graphs``, visited once (a streamed set builds each graph once)."""
    s = DataStatistics(num_species)
    for g in graphs:
        s.add(g)
    return s


def average_num_neighbors(graphs: Iterable[GraphFrame]) -> float:
    """Mean number of neighbours within r_max per atom (edges / atoms)."""
    atoms = edges = 0
    for g in graphs:
        atoms += g.num_atoms
        edges += int(g.centre.shape[0])
    return edges / max(atoms, 1)


def fit_reference_energies(graphs: Iterable[GraphFrame], num_species: int) -> np.ndarray:
    """Per-species reference energies (eV/atom); see ``DataStatistics.reference_energies``."""
    return statistics(graphs, num_species).reference_energies()


def forces_rms(graphs: Iterable[GraphFrame]) -> float | None:
    """Root mean square of the force components (eV/Å), or None without forces."""
    sq, n = 0.0, 0
    for g in graphs:
        if g.forces is not None:
            sq += float(g.forces.double().pow(2).sum())
            n += int(g.forces.numel())
    return (sq / n) ** 0.5 if n else None


def sharded_statistics(graphs: Sequence[GraphFrame], num_species: int, parallel: Parallel
                       ) -> DataStatistics:
    """``DataStatistics`` of the training graphs; with several processes each visits every
    world_size-th frame and the sums are added (a streamed set is read once in all)."""
    mine = range(parallel.rank, len(graphs), parallel.world_size)
    stats = statistics((graphs[i] for i in mine), num_species)
    if parallel.active:
        stats = DataStatistics.from_vector(num_species, parallel.all_reduce_sum(stats.vector()))
    return stats
