"""Training data: read labelled extxyz with ASE, validate every frame, build the graphs, and
collate frames into batches (on the CPU; ``Batch.to`` moves one to the training device).

Units: positions Å, energy eV, forces eV/Å, stress eV/Å^3 (ASE convention: Voigt order
xx yy zz yz xz xy, negative under compression). Frames are numbered from 0 in error messages.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers
from ase.stress import full_3x3_to_voigt_6_stress

from facet.graph import FacetInputError, build_graph


class DataError(ValueError):
    """A training file or frame that cannot be used, with the file and frame in the message."""


@dataclass(frozen=True)
class LabelKeys:
    """Where the labels live in the extxyz file (``atoms.info``/``atoms.arrays`` or the
    ``SinglePointCalculator`` ASE attaches for the standard names)."""

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"


@dataclass
class LabelledFrame:
    """One structure with its reference labels; ``where`` is ``"file, frame k"``."""

    atoms: Atoms
    energy: float
    forces: np.ndarray | None
    stress: np.ndarray | None  # Voigt 6, only for fully periodic cells
    where: str


def _lookup(atoms: Atoms, key: str, per_atom: bool):
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        return store[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


def read_frames(path: str | os.PathLike, index: str = ":") -> list[Atoms]:
    """All frames of an extxyz file; clear errors for a missing, empty or unreadable file."""
    import ase.io

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (no frames)")
    try:
        frames = ase.io.read(path, index=index, format="extxyz")
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read it as extxyz: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise DataError(f"{path}: file is empty (no frames)")
    return list(frames)


def labelled_frames(
    frames: Sequence[Atoms],
    source: str,
    keys: LabelKeys = LabelKeys(),
    require_forces: bool = True,
    require_stress: bool = False,
) -> list[LabelledFrame]:
    """Extract and check the labels of every frame.

    Raises ``DataError`` naming ``source`` and the frame for: no energy, no forces when
    ``require_forces``, wrongly shaped labels, NaN/inf in positions, cell or labels, no atoms.
    A frame without stress (or not periodic in all three directions) simply has no stress label,
    unless ``require_stress``.
    """
    return [
        check_frame(atoms, f"{source}, frame {k}", keys, require_forces, require_stress)
        for k, atoms in enumerate(frames)
    ]


def check_frame(
    atoms: Atoms,
    where: str,
    keys: LabelKeys = LabelKeys(),
    require_forces: bool = True,
    require_stress: bool = False,
) -> LabelledFrame:
    """The labels of one frame, checked (see ``labelled_frames``); ``where`` names it in
    errors."""
    n = len(atoms)
    if n == 0:
        raise DataError(f"{where}: the frame has no atoms")
    if not np.isfinite(atoms.positions).all():
        raise DataError(f"{where}: positions contain NaN or inf")
    if not np.isfinite(atoms.cell.array).all():
        raise DataError(f"{where}: the cell contains NaN or inf")
    energy = _lookup(atoms, keys.energy, per_atom=False)
    if energy is None:
        raise DataError(
            f"{where}: no energy label '{keys.energy}' (set --energy-key to the name the "
            f"file uses; info keys here: {sorted(atoms.info)})"
        )
    try:
        energy = float(np.asarray(energy).reshape(()))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: energy '{keys.energy}' is not one number") from exc
    if not np.isfinite(energy):
        raise DataError(f"{where}: energy '{keys.energy}' is {energy} (NaN/inf label)")
    forces = _lookup(atoms, keys.forces, per_atom=True)
    if forces is None:
        if require_forces:
            raise DataError(
                f"{where}: no forces label '{keys.forces}' but the force weight is > 0 (set "
                f"--forces-key, or --forces-weight 0 to train on energies only; per-atom "
                f"arrays here: {sorted(atoms.arrays)})"
            )
    else:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (n, 3):
            raise DataError(
                f"{where}: forces '{keys.forces}' have shape {forces.shape}, expected ({n}, 3)"
            )
        bad = np.argwhere(~np.isfinite(forces))
        if len(bad):
            raise DataError(
                f"{where}: forces '{keys.forces}' contain NaN/inf (atom {int(bad[0][0])})"
            )
    stress = _lookup(atoms, keys.stress, per_atom=False)
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape in ((3, 3), (9,)):
            stress = full_3x3_to_voigt_6_stress(stress.reshape(3, 3))
        if stress.shape != (6,):
            raise DataError(
                f"{where}: stress '{keys.stress}' has shape {stress.shape}; expected 6 (Voigt "
                "xx yy zz yz xz xy) or 3x3"
            )
        if not np.isfinite(stress).all():
            raise DataError(f"{where}: stress '{keys.stress}' contains NaN/inf")
        if not atoms.pbc.all():
            stress = None  # no volume: a stress label is meaningless here
    if stress is None and require_stress:
        raise DataError(f"{where}: no stress label '{keys.stress}' (or the cell is not periodic)")
    return LabelledFrame(atoms, energy, forces, stress, where)


def read_labelled(
    path: str | os.PathLike,
    keys: LabelKeys = LabelKeys(),
    require_forces: bool = True,
    require_stress: bool = False,
) -> list[LabelledFrame]:
    """``read_frames`` + ``labelled_frames``."""
    return labelled_frames(read_frames(path), str(path), keys, require_forces, require_stress)


def elements_of(frames: Sequence[LabelledFrame]) -> list[str]:
    """Chemical symbols present, ordered by atomic number (the ``--elements auto`` choice)."""
    present = {s for f in frames for s in f.atoms.get_chemical_symbols()}
    return sorted(present, key=lambda s: atomic_numbers[s])


@dataclass
class GraphFrame:
    """A frame with its radius graph, as tensors (rij in the training dtype)."""

    species: torch.Tensor  # [n] int64
    centre: torch.Tensor  # [E] int64
    neighbour: torch.Tensor  # [E] int64
    rij: torch.Tensor  # [E, 3]
    energy: float
    forces: torch.Tensor | None  # [n, 3]
    stress: torch.Tensor | None  # [6]
    volume: float
    where: str

    @property
    def num_atoms(self) -> int:
        return int(self.species.shape[0])


def build_graphs(
    frames: Sequence[LabelledFrame],
    elements: list[str],
    r_max: float,
    min_distance: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> list[GraphFrame]:
    """Neighbour lists of every frame, computed once. Errors name the file and frame."""
    return [graph_frame(f, elements, r_max, min_distance, dtype) for f in frames]


def graph_frame(
    frame: LabelledFrame,
    elements: list[str],
    r_max: float,
    min_distance: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> GraphFrame:
    """The radius graph (cutoff ``r_max``, Å) and labels of one frame as CPU tensors, ``rij``
    and labels in ``dtype``. Errors name the file and frame."""
    try:
        g = build_graph(frame.atoms, elements, r_max, min_distance)
    except FacetInputError as exc:
        raise DataError(f"{frame.where}: {exc}") from exc
    volume = float(frame.atoms.get_volume()) if frame.atoms.pbc.all() else 1.0
    return GraphFrame(
        species=torch.as_tensor(g.species),
        centre=torch.as_tensor(g.centre),
        neighbour=torch.as_tensor(g.neighbour),
        rij=torch.as_tensor(g.rij, dtype=dtype),
        energy=frame.energy,
        forces=None if frame.forces is None else torch.as_tensor(frame.forces, dtype=dtype),
        stress=None if frame.stress is None else torch.as_tensor(frame.stress, dtype=dtype),
        volume=volume,
        where=frame.where,
    )


@dataclass
class Batch:
    """Several frames as one disjoint graph (node indices offset per frame)."""

    species: torch.Tensor
    centre: torch.Tensor
    neighbour: torch.Tensor
    rij: torch.Tensor
    node_batch: torch.Tensor  # [N] frame of each atom
    edge_batch: torch.Tensor  # [E] frame of each edge
    num_atoms: torch.Tensor  # [B] (float, training dtype)
    energy: torch.Tensor  # [B]
    forces: torch.Tensor  # [N, 3] (zeros where absent)
    forces_mask: torch.Tensor  # [N] bool
    stress: torch.Tensor  # [B, 6] (zeros where absent)
    stress_mask: torch.Tensor  # [B] bool
    volume: torch.Tensor  # [B]

    @property
    def num_structures(self) -> int:
        return int(self.energy.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """This batch with every tensor on ``device`` (``self`` if they are already there)."""
        device = torch.device(device)
        if self.rij.device == device:
            return self
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True)
                        for f in dataclasses.fields(self)})


def collate(frames: Sequence[GraphFrame]) -> Batch:
    """Concatenate graphs with node-index offsets."""
    dtype = frames[0].rij.dtype
    sizes = [f.num_atoms for f in frames]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_edges = [int(f.centre.shape[0]) for f in frames]
    zeros_f = [torch.zeros(f.num_atoms, 3, dtype=dtype) for f in frames]
    return Batch(
        species=torch.cat([f.species for f in frames]),
        centre=torch.cat([f.centre + int(o) for f, o in zip(frames, offsets, strict=True)]),
        neighbour=torch.cat(
            [f.neighbour + int(o) for f, o in zip(frames, offsets, strict=True)]
        ),
        rij=torch.cat([f.rij for f in frames]),
        node_batch=torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(sizes)),
        edge_batch=torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(n_edges)),
        num_atoms=torch.tensor(sizes, dtype=dtype),
        energy=torch.tensor([f.energy for f in frames], dtype=dtype),
        forces=torch.cat(
            [f.forces if f.forces is not None else z for f, z in zip(frames, zeros_f, strict=True)]
        ),
        forces_mask=torch.cat(
            [torch.full((f.num_atoms,), f.forces is not None, dtype=torch.bool) for f in frames]
        ),
        stress=torch.stack(
            [f.stress if f.stress is not None else torch.zeros(6, dtype=dtype) for f in frames]
        ),
        stress_mask=torch.tensor([f.stress is not None for f in frames], dtype=torch.bool),
        volume=torch.tensor([f.volume for f in frames], dtype=dtype),
    )


def label_summary(frames: Sequence[GraphFrame]) -> np.ndarray:
    """``[F, 3]`` int64: atom count, has forces (0/1), has stress (0/1) of every frame. A set
    streamed from disk answers from its index (method ``label_summary``) without building
    graphs."""
    own = getattr(frames, "label_summary", None)
    if own is not None:
        return own()
    rows = [[g.num_atoms, g.forces is not None, g.stress is not None] for g in frames]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def batches(
    graphs: Sequence[GraphFrame], batch_size: int, order: Sequence[int] | None = None
) -> list[list[int]]:
    """Index lists of consecutive batches over ``order`` (default: file order)."""
    order = list(range(len(graphs))) if order is None else list(order)
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def split_indices(n: int, valid_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random train/validation split (at least one validation frame if fraction > 0
    and one training frame)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid fraction must be in [0, 1), got {valid_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = 0 if valid_fraction == 0 else min(max(1, round(valid_fraction * n)), n - 1)
    return sorted(perm[n_valid:].tolist()), sorted(perm[:n_valid].tolist())
