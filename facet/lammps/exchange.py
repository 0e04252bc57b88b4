"""LAMMPS' ML-IAP arrays as tensors, results back to LAMMPS, and the KOKKOS per-layer exchange.

LAMMPS hands the model views of its own memory: numpy arrays on a host build, CuPy arrays on a
KOKKOS GPU build, and for a count of zero either ``None`` or, in the KOKKOS coupling, an
exception (``ValueError: Invalid shape in axis 0: 0``) on access. Everything here reads them
through ``field``, which turns both into "empty", so a rank without atoms, ghosts or pairs
runs the same code path (and the same exchanges) as every other rank.
"""

from __future__ import annotations

import numpy as np
import torch

# which count sizes each array of the ML-IAP data object
_SIZED_BY = {
    "elems": "ntotal",
    "iatoms": "natomneigh",
    "ielems": "natomneigh",
    "numneighs": "natomneigh",
    "pair_i": "npairs",
    "pair_j": "npairs",
    "jelems": "npairs",
    "rij": "npairs",
}


def field(data, name: str):
    """``data.<name>``, or None where its count is zero (the KOKKOS coupling raises there)."""
    if getattr(data, _SIZED_BY[name]) == 0:
        return None
    return getattr(data, name)


def lammps_device(data) -> torch.device:
    """Where LAMMPS keeps this call's arrays: ``cuda:k`` when they are device arrays (CuPy, from
    a KOKKOS GPU build), else the host."""
    for name in ("rij", "elems"):
        array = field(data, name)
        if array is not None and hasattr(array, "__cuda_array_interface__"):
            return torch.device("cuda", array.device.id)
    return torch.device("cpu")


def as_tensor(array, device: torch.device, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    """A LAMMPS array (numpy on the host, CuPy on a GPU build; None when empty) as a tensor on
    ``device`` with ``dtype`` (zero-copy where the types already agree)."""
    if array is None or 0 in shape:
        return torch.zeros(shape, dtype=dtype, device=device)
    # numpy on the host; CuPy (device arrays) through DLPack, no copy
    t = torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)
    return t.to(device=device, dtype=dtype)


def read(data, name: str, device: torch.device, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    """``as_tensor(field(data, name), ...)``: an ML-IAP array as a tensor, empty when LAMMPS has
    none."""
    return as_tensor(field(data, name), device, dtype, *shape)


def to_host(array) -> np.ndarray:
    """A LAMMPS array as numpy (CuPy arrays are copied from the GPU)."""
    return array.get() if hasattr(array, "__cuda_array_interface__") else np.asarray(array)


def to_lammps(t: torch.Tensor, lmp_dev: torch.device):
    """A result in the form LAMMPS' setters take: float64, contiguous; a numpy array for a host
    build, a tensor on LAMMPS' GPU for a KOKKOS GPU build (read through ``data_ptr``)."""
    t = t.to(device=lmp_dev, dtype=torch.float64).contiguous()
    return t.numpy() if lmp_dev.type == "cpu" else t


def write_results(data, eatoms: torch.Tensor, fij: torch.Tensor | None,
                  lmp_dev: torch.device) -> None:
    """Hand LAMMPS this rank's results: pair gradients ``fij = dE_local/drij`` [npairs, 3]
    (LAMMPS applies ``f_i += fij, f_j -= fij`` and tallies the virial), per-atom energies of
    the listed atoms and their sum. Nothing is written where LAMMPS has no array."""
    if fij is not None and data.npairs > 0:
        data.update_pair_forces(to_lammps(fij, lmp_dev))
    eatoms = to_lammps(eatoms.detach(), lmp_dev)
    if data.nlistatoms > 0:
        _write_eatoms(data, eatoms)
    data.energy = float(eatoms.sum())


def _write_eatoms(data, eatoms) -> None:
    """Per-atom energies of the listed atoms: a setter in the plain coupling, a view to fill in
    the KOKKOS one (CuPy on a GPU build)."""
    try:
        data.eatoms = eatoms
    except AttributeError:
        view = data.eatoms
        if hasattr(view, "__cuda_array_interface__"):
            import cupy

            view[:] = cupy.from_dlpack(eatoms)
        else:
            view[:] = np.asarray(eatoms)


# -- KOKKOS per-layer exchange ---------------------------------------------------------------
def halo_forward(h_local: torch.Tensor, ntotal: int, data, lmp_dev: torch.device) -> torch.Tensor:
    """All ``ntotal`` rows from the ``nlocal`` local ones: ghost rows copied from their owners
    (LAMMPS ``forward_exchange``), on the device of ``h_local``. Collective: every rank calls
    it the same number of times, also with no rows."""
    nlocal, width = h_local.shape
    full = torch.zeros(ntotal, width, dtype=h_local.dtype, device=lmp_dev)
    full[:nlocal] = h_local
    out = torch.empty_like(full)
    data.forward_exchange(full, out, width)
    return out.to(h_local.device)


def halo_reverse(grad: torch.Tensor, nlocal: int, data, lmp_dev: torch.device) -> torch.Tensor:
    """The local rows of ``grad`` [ntotal, d] with the ghost rows summed into their owners
    (LAMMPS ``reverse_exchange``). Collective, like ``halo_forward``."""
    g = grad.to(lmp_dev).contiguous()
    summed = torch.empty_like(g)
    data.reverse_exchange(g, summed, g.shape[1])
    return summed[:nlocal].to(grad.device)


class HaloExchange(torch.autograd.Function):
    """Forward: local rows -> all rows, ghost rows copied from their owners (LAMMPS
    ``forward_exchange``). Backward: ghost-row gradients summed into their owners
    (``reverse_exchange``). LAMMPS reads and writes raw pointers, so the buffers it sees live
    where its arrays live (``lmp_dev``: the host, or the GPU of a KOKKOS CUDA build), whatever
    device the model runs on."""

    @staticmethod
    def forward(ctx, h_local: torch.Tensor, ntotal: int, data, lmp_dev: torch.device):
        ctx.data, ctx.nlocal, ctx.lmp_dev = data, h_local.shape[0], lmp_dev
        return halo_forward(h_local, ntotal, data, lmp_dev)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return halo_reverse(grad_out, ctx.nlocal, ctx.data, ctx.lmp_dev), None, None, None
