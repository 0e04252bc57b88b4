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


def load_bytes(data: bytes, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` of serialised bytes onto ``device``, quietly."""
    with quiet_torchscript():
        return torch.jit.load(io.BytesIO(data), map_location=device)
