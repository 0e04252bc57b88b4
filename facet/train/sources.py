"""Where training frames come from: an extxyz file read into memory, or a ``--preprocess``
directory streamed from disk (``facet.train.store``), and the graphs of either."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from facet.config import FacetConfig
from facet.train.data import (
    DataError,
    GraphFrame,
    LabelKeys,
    LabelledFrame,
    build_graphs,
    elements_of,
    read_labelled,
)
from facet.train.store import FrameStore, StreamedGraphs, is_store

Source = list[LabelledFrame] | tuple[FrameStore, np.ndarray]
"""Frames in memory, or a store and the frame numbers taken from it."""


def load_source(path: str, keys: LabelKeys, require_forces: bool) -> Source:
    """An extxyz file read into memory, or a ``--preprocess`` directory opened as a store."""
    if is_store(path):
        store = FrameStore(path)
        if keys != LabelKeys(*store.meta["label_keys"]) and keys != LabelKeys():
            raise DataError(f"{path} was preprocessed with label keys "
                            f"{store.meta['label_keys']}; drop the --*-key options")
        everything = np.arange(len(store))
        if require_forces:
            store.check_forces(everything)
        return store, everything
    if Path(path).is_dir():
        raise DataError(f"{path}: a directory but not one written by --preprocess")
    return read_labelled(path, keys, require_forces=require_forces)


def take(source: Source, indices: list[int]) -> Source:
    """The frames ``indices`` (numbers within ``source``)."""
    if isinstance(source, tuple):
        store, idx = source
        return store, idx[np.asarray(indices, dtype=np.int64)]
    return [source[i] for i in indices]


def source_size(source: Source) -> int:
    return len(source[1]) if isinstance(source, tuple) else len(source)


def source_elements(source: Source) -> list[str]:
    """Chemical symbols present (a store lists those of the whole file it was written from)."""
    return list(source[0].elements) if isinstance(source, tuple) else elements_of(source)


def to_graphs(source: Source, cfg: FacetConfig, dtype: torch.dtype) -> Sequence[GraphFrame]:
    """In memory: every graph built now. A store: graphs built when a batch asks for them."""
    if isinstance(source, tuple):
        store, idx = source
        return StreamedGraphs(store, idx, cfg.elements, cfg.r_max, cfg.min_distance, dtype)
    return build_graphs(source, cfg.elements, cfg.r_max, cfg.min_distance, dtype)
