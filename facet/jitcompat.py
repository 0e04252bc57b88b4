"""TorchScript without deprecation noise.

torch 2.13 deprecates ``torch.jit.script``/``save``/``load`` and warns on every call (88
DeprecationWarnings for one frozen Facet model). TorchScript remains a supported deployment
format here (LAMMPS ML-IAP files, ``FacetCalculator(script=True)``), so the project's own calls
go through these wrappers, which silence exactly those deprecation messages and nothing else.
The path that needs no TorchScript at all is the AOTInductor package (``facet.aoti``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import torch

_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's "`torch.jit.*` is deprecated" DeprecationWarnings inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED, category=DeprecationWarning)
        yield


def script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(module)``, quietly."""
    with quiet_torchscript():
        return torch.jit.script(module)


def save_bytes(module: torch.jit.ScriptModule) -> bytes:
    """A ScriptModule serialised to bytes (``load_bytes`` reads it back), quietly."""
    buf = io.BytesIO()
    with quiet_torchscript():
        torch.jit.save(module, buf)
    return buf.getvalue()


def load(source: str | bytes, device: str | torch.device = "cpu",
         extra_files: dict[str, str] | None = None) -> torch.jit.ScriptModule:
    """``torch.jit.load`` of a file path or serialised bytes onto ``device``, quietly; a file
    that calls Facet's fused kernels (``facet::`` operators) loads them first (``facet.ops``,
    ``FacetOpsError`` if they cannot be built here)."""
    def attempt() -> torch.jit.ScriptModule:
        src = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
        with quiet_torchscript():
            if extra_files is None:
                return torch.jit.load(src, map_location=device)
            return torch.jit.load(src, map_location=device, _extra_files=extra_files)

    try:
        return attempt()
    except RuntimeError as exc:
        if "facet::" not in str(exc):
            raise
    import facet.ops

    try:
        facet.ops.load()
    except facet.ops.FacetOpsError as exc:
        raise facet.ops.FacetOpsError(
            f"this TorchScript file calls Facet's fused CPU kernels, unavailable here: {exc}. "
            "Or deploy it without them: facet-deploy ... --no-fused-kernels") from None
    return attempt()


def load_bytes(data: bytes, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` of serialised bytes onto ``device``, quietly (see ``load``)."""
    return load(data, device)
