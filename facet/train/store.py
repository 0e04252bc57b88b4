"""A training set on disk, streamed: written once from an extxyz file, read through memory maps.

``facet-train --train data.xyz --preprocess data.frames`` (``write_store``) reads the extxyz one
frame at a time (``ase.io.iread``), checks every frame as the in-memory path does and appends
it to flat binary arrays; ``facet-train --train data.frames ...`` then trains from them. Neither
step holds the data set in memory: a frame is read from the maps when a batch needs it, and its
graph is built then (``StreamedGraphs``), so memory holds one batch of graphs, the index
(``atom_offsets``, 8 bytes per frame) and the epoch's permutation.

The format (a directory; little-endian, C order; ``F`` frames, ``N`` atoms in all):

=================  ========  ===========  ==============================================
file               dtype     shape        what
=================  ========  ===========  ==============================================
``meta.json``                             format, version, source file, label keys,
                                          F, N, elements present (by atomic number)
``atom_offsets``   int64     [F + 1]      frame k has atoms offsets[k] .. offsets[k+1]-1
``numbers``        uint8     [N]          atomic numbers
``positions``      float64   [N, 3]       Å
``forces``         float64   [N, 3]       eV/Å (zeros where a frame has none)
``cell``           float64   [F, 3, 3]    Å, rows are lattice vectors
``pbc``            bool      [F, 3]
``energy``         float64   [F]          eV
``stress``         float64   [F, 6]       eV/Å^3, Voigt xx yy zz yz xz xy, ASE sign (zeros
                                          where none)
``has_forces``     bool      [F]
``has_stress``     bool      [F]          (only fully periodic frames carry one)
=================  ========  ===========  ==============================================

Each array file is raw bytes (``<name>.bin``): ``np.memmap(path, dtype, mode="r")`` reads it.
Frames are stored as read, in float64, so the graphs and labels equal those of the in-memory
path exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from facet.train.data import (
    DataError,
    GraphFrame,
    LabelKeys,
    LabelledFrame,
    check_frame,
    graph_frame,
)

FORMAT = "facet-frames"
FORMAT_VERSION = 1
# name: (dtype, shape of one row); rows are atoms or frames
ATOM_ARRAYS = {"numbers": ("<u1", ()), "positions": ("<f8", (3,)), "forces": ("<f8", (3,))}
FRAME_ARRAYS = {
    "cell": ("<f8", (3, 3)), "pbc": ("|b1", (3,)), "energy": ("<f8", ()),
    "stress": ("<f8", (6,)), "has_forces": ("|b1", ()), "has_stress": ("|b1", ()),
}


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by ``write_store``."""
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def iter_frames(path: str | os.PathLike) -> Iterator[Atoms]:
    """The frames of an extxyz file one at a time; clear errors for a missing, empty or
    unreadable file (naming the frame that failed)."""
    import ase.io

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (no frames)")
    k = 0
    try:
        for atoms in ase.io.iread(path, index=":", format="extxyz"):
            yield atoms
            k += 1
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"{path}, frame {k}: cannot read it as extxyz: {type(exc).__name__}: {exc}"
        ) from exc


def write_store(
    source: str | os.PathLike, out: str | os.PathLike, keys: LabelKeys | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Convert the extxyz ``source`` to the on-disk format in the new directory ``out``,
    streaming (one frame in memory at a time). Frames are checked as for training
    (``check_frame``); a frame without forces or stress is stored without them. Returns
    ``out``."""
    keys = LabelKeys() if keys is None else keys
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} exists already: give a new directory to --preprocess")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    n_frames = n_atoms = 0
    present: set[int] = set()
    try:
        with contextlib.ExitStack() as stack:
            files = {name: stack.enter_context(open(partial / f"{name}.bin", "wb"))
                     for name in ["atom_offsets", *ATOM_ARRAYS, *FRAME_ARRAYS]}
            files["atom_offsets"].write(np.zeros(1, "<i8").tobytes())
            for atoms in iter_frames(source):
                f = check_frame(atoms, f"{source}, frame {n_frames}", keys, require_forces=False)
                n = len(atoms)
                numbers = atoms.numbers.astype("<u1")
                present.update(int(z) for z in np.unique(numbers))
                rows = {
                    "numbers": numbers,
                    "positions": atoms.positions,
                    "forces": np.zeros((n, 3)) if f.forces is None else f.forces,
                    "cell": atoms.cell.array,
                    "pbc": atoms.pbc,
                    "energy": np.asarray(f.energy),
                    "stress": np.zeros(6) if f.stress is None else f.stress,
                    "has_forces": np.asarray(f.forces is not None),
                    "has_stress": np.asarray(f.stress is not None),
                }
                for name, (dtype, _) in {**ATOM_ARRAYS, **FRAME_ARRAYS}.items():
                    files[name].write(np.ascontiguousarray(rows[name], dtype=dtype).tobytes())
                n_frames += 1
                n_atoms += n
                files["atom_offsets"].write(np.asarray([n_atoms], "<i8").tobytes())
                if log is not None and n_frames % 10000 == 0:
                    log(f"{n_frames} frames, {n_atoms} atoms")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if n_frames == 0:
        shutil.rmtree(partial)
        raise DataError(f"{source}: file is empty (no frames)")
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "source": str(source),
        "label_keys": [keys.energy, keys.forces, keys.stress],
        "num_frames": n_frames, "num_atoms": n_atoms,
        "elements": [chemical_symbols[z] for z in sorted(present)],
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    os.replace(partial, out)
    return out


class FrameStore:
    """The arrays of a ``write_store`` directory, memory-mapped read-only; ``frame(k)`` reads
    one frame."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not is_store(self.path):
            raise DataError(f"{self.path}: not a facet-train data directory (no meta.json of "
                            f"format {FORMAT!r}); write one with --preprocess")
        self.meta = json.loads((self.path / "meta.json").read_text())
        if self.meta.get("format_version", 0) > FORMAT_VERSION:
            raise DataError(f"{self.path}: format version {self.meta['format_version']} is "
                            "newer than this facet; upgrade facet or preprocess again")
        f, n = int(self.meta["num_frames"]), int(self.meta["num_atoms"])
        self.source = str(self.meta["source"])
        self.elements: list[str] = list(self.meta["elements"])
        self.atom_offsets = self._map("atom_offsets", "<i8", (f + 1,))
        self.arrays: dict[str, np.memmap] = {}
        for name, (dtype, row) in ATOM_ARRAYS.items():
            self.arrays[name] = self._map(name, dtype, (n, *row))
        for name, (dtype, row) in FRAME_ARRAYS.items():
            self.arrays[name] = self._map(name, dtype, (f, *row))

    def _map(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.memmap:
        path = self.path / f"{name}.bin"
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise DataError(f"{path}: missing or truncated ({expected} bytes expected); "
                            "preprocess the data again")
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def __len__(self) -> int:
        return int(self.meta["num_frames"])

    def frame(self, k: int) -> LabelledFrame:
        """Frame ``k`` (copied out of the maps) with its labels."""
        a, b = int(self.atom_offsets[k]), int(self.atom_offsets[k + 1])
        arr = self.arrays
        atoms = Atoms(numbers=np.array(arr["numbers"][a:b], dtype=np.int64),
                      positions=np.array(arr["positions"][a:b]),
                      cell=np.array(arr["cell"][k]), pbc=np.array(arr["pbc"][k]))
        return LabelledFrame(
            atoms=atoms,
            energy=float(arr["energy"][k]),
            forces=np.array(arr["forces"][a:b]) if arr["has_forces"][k] else None,
            stress=np.array(arr["stress"][k]) if arr["has_stress"][k] else None,
            where=f"{self.source}, frame {k}",
        )

    def label_summary(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[len(indices), 3]`` int64: atoms, has forces, has stress (from the index alone)."""
        idx = np.asarray(indices, dtype=np.int64)
        return np.stack([self.atom_offsets[idx + 1] - self.atom_offsets[idx],
                         self.arrays["has_forces"][idx], self.arrays["has_stress"][idx]],
                        axis=1).astype(np.int64)

    def check_forces(self, indices: Sequence[int] | np.ndarray) -> None:
        """``DataError`` naming the first of ``indices`` without forces (a force weight > 0
        needs them on every frame, as in the in-memory path)."""
        idx = np.asarray(indices, dtype=np.int64)
        missing = idx[~np.asarray(self.arrays["has_forces"][idx], dtype=bool)]
        if len(missing):
            key = self.meta["label_keys"][1]
            raise DataError(
                f"{self.source}, frame {int(missing.min())}: no forces label '{key}' but the "
                "force weight is > 0 (--forces-weight 0 trains on energies only)"
            )


class StreamedGraphs(Sequence[GraphFrame]):
    """Frames ``indices`` of a ``FrameStore`` as a sequence of graphs, each built when asked
    for (nothing is cached: ``graphs[i]`` reads frame ``indices[i]`` and builds its graph)."""

    def __init__(self, store: FrameStore, indices: Sequence[int] | np.ndarray,
                 elements: list[str], r_max: float, min_distance: float = 0.1,
                 dtype: torch.dtype = torch.float32) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.elements = list(elements)
        self.r_max = float(r_max)
        self.min_distance = float(min_distance)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        if not isinstance(i, (int, np.integer)):
            raise TypeError("StreamedGraphs takes one integer index at a time")
        frame = self.store.frame(int(self.indices[i]))
        return graph_frame(frame, self.elements, self.r_max, self.min_distance, self.dtype)

    def label_summary(self) -> np.ndarray:
        """``[len(self), 3]`` int64: atoms, has forces, has stress (no graphs built)."""
        return self.store.label_summary(self.indices)
