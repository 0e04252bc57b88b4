"""The file the native LAMMPS plugin reads (``pair_style facet FILE``), and its deck lines.

The file is a TorchScript archive of the bare model with its layer-by-layer entry points
(``embed``, ``edge_features``, ``layer``, ``layer_forward_chunked``, ``layer_backward_chunked``,
``readout``, and since git 77f3b9f ``edge_slots`` + ``layer_padded``, which the plugin's single
pass prefers where a file has them), loaded by libtorch's ``torch::jit::load``: no Python and no
pickled Python objects
at run time. Its metadata travels inside the archive as the extra file ``facet_plugin.json``
(format name and version, elements, r_max, layers, feature widths, dtype, device, chunking
defaults, the single pass's working memory per pair, versions); the plugin
(``lammps_plugin/pair_facet.cpp``) refuses another format or version with a LAMMPS error that
says what to do.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

FORMAT = "facet-lammps-plugin"
FORMAT_VERSION = 1
METADATA_FILE = "facet_plugin.json"  # name of the extra file inside the TorchScript archive
LIBRARY_NAME = "facetplugin.so"  # LAMMPS_PLUGIN_PATH autoloads files ending in plugin.so
POINTER_FILE = "facet-lammps-plugin"  # in the venv: absolute path of the built plugin


def plugin_metadata(model, dtype: str, device: str, chunk_edges: int | None = None,
                    single_pass_edges: int | None = None,
                    checkpoint: str | Path | None = None, fused: bool = False) -> dict[str, Any]:
    """The metadata stored in the plugin file (JSON-serialisable); ``fused``: the file calls
    ``facet.ops``' kernels."""
    import facet.ops
    from facet import __version__
    from facet.chunks import resolve_chunking
    from facet.memory import single_pass_bytes_per_pair
    from facet.ops import OPS_VERSION

    cfg = model.config
    chunking = resolve_chunking(device, chunk_edges, single_pass_edges)
    with facet.ops.fused(model, fused):  # the fused kernels keep far less for the backward
        bytes_per_pair = single_pass_bytes_per_pair(model)
    # the plugin may run the file on another device than written for (pair_style ... device
    # cuda): the chunking for each device type, the explicit values where given
    by_device = {d: list(resolve_chunking(d, chunk_edges, single_pass_edges))
                 for d in ("cpu", "cuda")}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "elements": list(cfg.elements),
        "r_max": float(cfg.r_max),
        "num_layers": int(cfg.num_interactions),
        # node-feature widths: input of layer 0 (embedding), output of every layer
        "feature_dims": [int(d) for d in model.feature_dims],
        "irreps": list(model.irreps_chain),
        "dtype": dtype,
        "device": device,
        "chunk_edges": chunking[0],
        "single_pass_edges": chunking[1],
        "chunking_by_device": by_device,
        # the plugin's CPU single pass extends to the pairs that fit its memory budget
        # (pair_style facet ... single_pass_memory), at this measured rate
        "single_pass_bytes_per_pair": bytes_per_pair,
        # >0: the tensor products call the facet:: operators of this version on the CPU
        "fused_kernels": OPS_VERSION if fused else 0,
        "facet_version": __version__,
        "torch_version": str(torch.__version__),
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "",
        "config": cfg.to_dict(),
    }


def write_plugin_file(checkpoint: str | Path, out: str | Path, dtype: str = "float64",
                      device: str = "cpu", chunk_edges: int | None = None,
                      single_pass_edges: int | None = None,
                      fused: bool | None = None) -> dict[str, Any]:
    """Freeze ``checkpoint`` into the plugin's TorchScript file ``out``; returns the metadata.
    ``fused``: call ``facet.ops``' CPU kernels (the plugin has them compiled in); None = for
    a CPU file where they build. Raises ``facet.errors.CheckpointError`` for an unreadable
    checkpoint."""
    import facet.ops
    from facet.checkpoint import load_model
    from facet.freeze import script_model
    from facet.jitcompat import quiet_torchscript

    model = load_model(checkpoint, dtype=getattr(torch, dtype))
    fused = facet.ops.wanted(fused, device)
    meta = plugin_metadata(model, dtype, device, chunk_edges, single_pass_edges, checkpoint,
                           fused=fused)
    scripted = script_model(model, fused=fused)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with quiet_torchscript():
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: json.dumps(meta)})
    os.replace(tmp, out)
    return meta


def read_plugin_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a plugin file (loads the archive on the CPU)."""
    from facet.jitcompat import load

    extra = {METADATA_FILE: ""}
    load(str(path), "cpu", extra_files=extra)
    return json.loads(extra[METADATA_FILE])


def plugin_library() -> Path | None:
    """The built plugin (``deploy/build_plugin.sh``): ``$FACET_PLUGIN_LIB``, else the path the
    build script recorded in the venv; None if neither exists."""
    candidates = []
    if os.environ.get("FACET_PLUGIN_LIB"):
        candidates.append(Path(os.environ["FACET_PLUGIN_LIB"]))
    pointer = Path(sys.prefix) / POINTER_FILE
    if pointer.exists():
        candidates.append(Path(pointer.read_text().strip()))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    return None
