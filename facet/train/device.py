"""The device ``facet-train --device`` asks for, resolved to a ``torch.device`` with clear errors.

``auto`` (the default) is the GPU when torch sees one, else the CPU. Under ``torchrun`` each
process takes the GPU of its ``LOCAL_RANK`` (``--device cuda``), so the processes of one node
share its GPUs one each.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device does not exist here."""


def resolve_device(request: str = "auto", local_rank: int = 0, world_size: int = 1
                   ) -> torch.device:
    """``torch.device`` for ``request`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``); with CUDA it
    also becomes the current device. ``local_rank``/``world_size`` are this process's place among
    the data-parallel processes (``cuda`` then means ``cuda:local_rank``)."""
    req = request.strip().lower()
    if req == "auto":
        req = "cuda" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return torch.device("cpu")
    if req != "cuda" and not req.startswith("cuda:"):
        raise DeviceError(f"unknown device {request!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {request}: torch sees no CUDA GPU (torch {torch.__version__}, built for "
            f"CUDA {torch.version.cuda or 'none: a CPU-only build'}); use --device cpu, or check "
            "the driver, CUDA_VISIBLE_DEVICES and that torch is a CUDA build"
        )
    count = torch.cuda.device_count()
    if req == "cuda":
        index = local_rank if world_size > 1 else 0
    else:
        if world_size > 1:
            raise DeviceError(
                f"--device {request} with {world_size} processes: give --device cuda, and each "
                "process takes the GPU of its LOCAL_RANK"
            )
        try:
            index = int(req.split(":", 1)[1])
        except ValueError as exc:
            raise DeviceError(f"unknown device {request!r}: use cuda:N, N an integer") from exc
    if not 0 <= index < count:
        what = f"LOCAL_RANK {index}" if req == "cuda" else f"--device {request}"
        raise DeviceError(
            f"{what}, but torch sees {count} GPU(s) (CUDA_VISIBLE_DEVICES); start at most "
            f"{count} processes per node"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
