"""Freeze a Facet model to the TorchScript edge-list contract.

e3nn modules mix scripted and traced (code-generated) parts; ``e3nn.util.jit.compile`` compiles
each in its own mode before scripting the whole, so it is used instead of a bare
``torch.jit.script``.
"""

from __future__ import annotations

import copy

import torch
from e3nn.util import jit as e3nn_jit

from facet.contract import FacetPotential
from facet.jitcompat import load_bytes, quiet_torchscript, save_bytes
from facet.model import Facet


def _inference_copy(model: Facet, fused: bool | None) -> Facet:
    """A copy with gradients off for the weights, its tensor products fused or not (None: where
    ``facet.ops`` builds and ``FACET_FUSED_KERNELS`` is not 0)."""
    import facet.ops

    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return facet.ops.use_fused(model, facet.ops.wanted(fused))


def script_potential(model: Facet, fused: bool | None = None) -> torch.jit.ScriptModule:
    """TorchScript of ``FacetPotential(model)`` with gradients off for the weights (inference).

    ``fused``: the tensor products call ``facet.ops``' fused CPU kernels (on a GPU the file
    takes the batched matmul); loading the file then needs them (``facet.jitcompat.load_bytes``
    and the LAMMPS plugin have them). None: where they build here."""
    model = _inference_copy(model, fused)
    with quiet_torchscript():  # e3nn_jit.compile scripts parts too
        return torch.jit.script(e3nn_jit.compile(FacetPotential(model)))


def script_model(model: Facet, fused: bool | None = None) -> torch.jit.ScriptModule:
    """TorchScript of the bare model with its layer-by-layer entry points (``embed``,
    ``edge_features``, ``layer``, ``readout``), for runtimes that exchange features between
    layers. ``fused`` as in ``script_potential``."""
    model = _inference_copy(model, fused)
    with quiet_torchscript():
        return torch.jit.script(e3nn_jit.compile(model))


def to_bytes(module: torch.jit.ScriptModule) -> bytes:
    """Serialise a ScriptModule to bytes (``torch.jit.load(io.BytesIO(b))`` reads it back)."""
    return save_bytes(module)


def from_bytes(data: bytes, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    return load_bytes(data, device)
