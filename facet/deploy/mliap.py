"""The object LAMMPS loads for ``pair_style mliap unified <file>.pt 1``.

It carries the frozen TorchScript contract as bytes plus metadata, is unpickled by LAMMPS'
embedded Python (``torch.load(weights_only=False)``), loads the TorchScript lazily on the rank's
device, and in ``compute_forces`` maps LAMMPS' pair list onto the contract:
species = ``elems``, pairs = ``pair_i``/``pair_j``, ``rij = x_j - x_i``; it writes
``dE_local/drij`` with ``update_pair_forces`` (LAMMPS applies them to local and ghost atoms and
folds ghost forces back with ``newton pair on``; the virial follows from the pair forces) and the
per-atom energies of the listed local atoms.

Two paths, chosen per call from what LAMMPS offers:

- **plain** (``pair_style mliap``, any ML-IAP + PYTHON build): multi-layer exactness on a rank
  needs ghost atoms' features, hence ``ghostneigh = 1`` and a ghost shell (``comm_modify cutoff``)
  of at least ``num_layers * r_max + skin``; both are checked.
- **kokkos** (``-k on ... -sf kk``, ``pair_style mliap/kk``, whose data offers
  ``forward_exchange``/``reverse_exchange``): the model runs layer by layer on local atoms only;
  between layers ghost features are refreshed from their owners (forward exchange), and in the
  backward pass ghost gradients are summed into the owners (reverse exchange). Only a one-cutoff
  halo is needed (``ghostneigh = 0``, default comm cutoff) and no ghost features are computed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from facet.chunks import default_chunking

try:  # the base class exists only where LAMMPS' Python module is installed
    from lammps.mliap.mliap_unified_abc import MLIAPUnified
except ImportError:  # pragma: no cover - lets facet-deploy write files without LAMMPS
    class MLIAPUnified:  # type: ignore[no-redef]
        def __init__(self, interface, element_types, ndescriptors, nparams, rcutfac):
            self.interface = interface
            self.element_types = element_types
            self.ndescriptors = ndescriptors
            self.nparams = nparams
            self.rcutfac = rcutfac


class FacetLAMMPSError(RuntimeError):
    """A configuration error detected inside LAMMPS (printed by LAMMPS before it stops)."""


def local_rank() -> int:
    """Node-local MPI rank from the launcher's environment (Open MPI, MPICH/Hydra, SLURM)."""
    for key in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMI_LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def pick_device(requested: str) -> torch.device:
    """``cpu``, or ``cuda`` with one GPU per rank chosen from the node-local rank."""
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FacetLAMMPSError(
            "this model was deployed for CUDA but torch sees no GPU on this node; "
            "redeploy with `facet-deploy --device cpu` or run on a GPU node"
        )
    return torch.device("cuda", local_rank() % torch.cuda.device_count())


class FacetMLIAP(MLIAPUnified):
    """ML-IAP unified model wrapping a frozen Facet contract (see module docstring)."""

    def __init__(
        self,
        script_bytes: bytes,
        layers_bytes: bytes,
        elements: list[str],
        r_max: float,
        num_layers: int,
        dtype: str = "float64",
        device: str = "cpu",
        metadata: dict[str, Any] | None = None,
        chunk_edges: int | None = None,
        single_pass_edges: int | None = None,
    ) -> None:
        # ndescriptors = nparams = 1 (unused); LAMMPS' pair cutoff is 2 * rcutfac
        super().__init__(None, list(elements), 1, 1, 0.5 * float(r_max))
        self.script_bytes = script_bytes  # the edge-list contract (plain path)
        self.layers_bytes = layers_bytes  # the model with per-layer entry points (kokkos path)
        self.r_max = float(r_max)
        self.num_layers = int(num_layers)
        self.dtype_name = dtype
        self.device_name = device
        self.metadata = dict(metadata or {})
        chunking = default_chunking(device)
        # above single_pass_edges pairs per rank: recomputing evaluation in chunks of
        # chunk_edges pairs (facet.chunks); chunk_edges <= 0 turns it off
        self.chunk_edges = chunking[0] if chunk_edges is None else int(chunk_edges)
        self.single_pass_edges = (
            chunking[1] if single_pass_edges is None else int(single_pass_edges)
        )
        self.check_ghost_shell = True
        self._init_runtime()

    # -- state that must not be pickled --------------------------------------------------------
    def _init_runtime(self) -> None:
        self._module = None
        self._layers = None
        self._device = None
        self.path = None
        self._checked_ntotal = -1
        self._n_computed = 0
        self.calls = 0
        self.model_seconds = 0.0  # time inside the frozen module (and its tensor conversions)
        self.atom_counts = (0, 0)  # (local atoms, atoms whose features were computed), last call
        self.evaluation = ""  # "single pass" or "recomputing" (facet.chunks), last call

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_module", "_layers", "_device", "interface"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.interface = None
        self._init_runtime()

    # -- ML-IAP interface ----------------------------------------------------------------------
    def compute_descriptors(self, data) -> None:
        pass

    def compute_gradients(self, data) -> None:
        pass

    def _load(self) -> None:
        import io

        self._device = pick_device(self.device_name)
        self._dtype = getattr(torch, self.dtype_name)
        self._module = torch.jit.load(io.BytesIO(self.script_bytes), map_location=self._device)
        self._module.eval()
        chunking = default_chunking(self.device_name)  # objects saved before the option
        self.chunk_edges = getattr(self, "chunk_edges", chunking[0])
        self.single_pass_edges = getattr(self, "single_pass_edges", chunking[1])
        self._module.chunk_edges = self.chunk_edges
        self._module.single_pass_edges = self.single_pass_edges

    def _announce(self, path: str) -> None:
        if self.path != path:
            self.path = path
            if local_rank() == 0:
                chunking = (f"recomputing in chunks of {self.chunk_edges} pairs above "
                            f"{self.single_pass_edges} pairs per rank" if self.chunk_edges > 0
                            else "single pass")
                print(f"Facet ML-IAP: {path} path ({self.num_layers} layers, "
                      f"r_max {self.r_max:g} Å, {self.dtype_name} on {self._device}; "
                      f"{chunking})", flush=True)

    def compute_forces(self, data) -> None:
        if self._module is None:
            self._load()
        if hasattr(data, "forward_exchange") and data.natomneigh <= data.nlistatoms:
            self._announce("kokkos (per-layer halo exchange)")
            self._compute_exchange(data)
            return
        if hasattr(data, "forward_exchange"):
            self._announce("kokkos data with ghost neighbour lists (plain algorithm)")
        else:
            self._announce("plain (ghost features from ghostneigh lists)")
        self._compute_plain(data)

    def _compute_plain(self, data) -> None:
        nlistatoms = data.nlistatoms
        if data.npairs == 0 or data.rij is None or nlistatoms == 0:
            # no pairs on this rank: isolated atoms carry only their reference energies
            self._isolated_energies(data)
            return
        nlocal, ntotal, npairs = data.nlocal, data.ntotal, data.npairs
        lmp_dev = lammps_device(data)
        if self.num_layers > 1 and ntotal > nlocal:
            self._check_ghosts(data, nlocal, ntotal)
        t0 = time.perf_counter()
        dev = self._device
        species = as_tensor(data.elems, dev, torch.long, ntotal).clamp(min=0)
        pi = as_tensor(data.pair_i, dev, torch.long, npairs)
        pj = as_tensor(data.pair_j, dev, torch.long, npairs)
        rij = as_tensor(data.rij, dev, self._dtype, npairs, 3)
        self.evaluation = self._evaluation(npairs)
        e_local, dE_drij = self._module(species, pi, pj, rij, nlocal)
        iatoms = as_tensor(data.iatoms, dev, torch.long, data.natomneigh)[:nlistatoms]
        fij = to_lammps(dE_drij.detach(), lmp_dev)
        eatoms = to_lammps(e_local.detach()[iatoms], lmp_dev)
        self.model_seconds += time.perf_counter() - t0
        self.calls += 1
        # atoms whose features the contract computes: those within L-1 hops of a local atom
        self.atom_counts = (nlocal, self._n_computed or ntotal)
        data.update_pair_forces(fij)
        _write_eatoms(data, eatoms)
        data.energy = float(eatoms.sum())

    def _evaluation(self, npairs: int) -> str:
        """Which evaluation a call with ``npairs`` pairs takes (the contract decides the same)."""
        if self.chunk_edges > 0 and npairs > self.single_pass_edges:
            return "recomputing"
        return "single pass"

    def _isolated_energies(self, data) -> None:
        n = data.nlistatoms
        if n == 0:
            data.energy = 0.0
            return
        dev = self._device
        iatoms = as_tensor(data.iatoms, dev, torch.long, data.natomneigh)[:n]
        species = as_tensor(data.elems, dev, torch.long, data.ntotal)[iatoms]
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        rij = torch.zeros(0, 3, dtype=self._dtype, device=dev)
        e, _ = self._module(species, empty, empty, rij, n)
        eatoms = to_lammps(e.detach(), lammps_device(data))
        _write_eatoms(data, eatoms)
        data.energy = float(eatoms.sum())

    def _check_ghosts(self, data, nlocal, ntotal) -> None:
        if data.natomneigh <= data.nlistatoms:
            raise FacetLAMMPSError(
                f"this Facet model has {self.num_layers} message-passing layers and needs the "
                "neighbour lists of ghost atoms: use `pair_style mliap unified <file> 1` "
                "(ghostneigh = 1)"
            )
        if not self.check_ghost_shell or ntotal == self._checked_ntotal:
            return
        from facet.deploy.ghost_check import check_ghost_shell

        pair_i, pair_j, rij = (to_host(a) for a in (data.pair_i, data.pair_j, data.rij))
        report = check_ghost_shell(nlocal, ntotal, pair_i, pair_j, rij, self.r_max,
                                   self.num_layers)
        if not report.ok:
            need = self.num_layers * self.r_max
            raise FacetLAMMPSError(
                f"the ghost-atom shell is {report.deficit:.2f} Å too thin for this "
                f"{self.num_layers}-layer Facet model (receptive field {need:g} Å): results "
                f"near subdomain or periodic boundaries would be wrong. Add "
                f"`comm_modify cutoff {recommended_comm_cutoff(self.r_max, self.num_layers)}` "
                "(at least num_layers * r_max + neighbor skin + 1 Å) to the input deck"
            )
        self._checked_ntotal = ntotal
        self._n_computed = report.n_checked


    # -- kokkos path: layer by layer with halo exchange ---------------------------------------
    def _compute_exchange(self, data) -> None:
        """Every rank runs every exchange, also with zero atoms or pairs (else the job hangs)."""
        import io

        if self._layers is None:
            self._layers = torch.jit.load(io.BytesIO(self.layers_bytes), map_location=self._device)
            self._layers.eval()
        m = self._layers
        dev, dt = self._device, self._dtype
        lmp_dev = lammps_device(data)
        nlocal, ntotal, npairs = data.nlocal, data.ntotal, data.npairs
        t0 = time.perf_counter()
        species = as_tensor(data.elems, dev, torch.long, ntotal).clamp(min=0)
        pi = as_tensor(data.pair_i, dev, torch.long, npairs)
        pj = as_tensor(data.pair_j, dev, torch.long, npairs)
        rij = as_tensor(data.rij, dev, dt, npairs, 3)
        self.evaluation = self._evaluation(npairs)
        if self.evaluation == "recomputing":
            e_local, dE_drij = self._exchange_recomputing(m, data, species, pi, pj, rij, lmp_dev)
        else:
            e_local, dE_drij = self._exchange_single_pass(m, data, species, pi, pj, rij, lmp_dev)
        self.model_seconds += time.perf_counter() - t0
        self.calls += 1
        self.atom_counts = (nlocal, nlocal)
        nlist = data.nlistatoms
        iatoms = as_tensor(data.iatoms, dev, torch.long, data.natomneigh)[:nlist]
        eatoms = to_lammps(e_local.detach()[iatoms], lmp_dev)
        if npairs > 0:
            data.update_pair_forces(to_lammps(dE_drij, lmp_dev))
        if nlist > 0:
            _write_eatoms(data, eatoms)
        data.energy = float(eatoms.sum())

    def _exchange_single_pass(self, m, data, species, pi, pj, rij, lmp_dev):
        """One forward pass with autograd through ``HaloExchange``, then one backward pass."""
        nlocal, ntotal = data.nlocal, data.ntotal
        rij = rij.detach().requires_grad_(True)
        # a zero leaf every layer output depends on: the backward pass (and so every reverse
        # exchange) runs on every rank even where no feature depends on a pair vector
        anchor = torch.zeros((), dtype=rij.dtype, device=rij.device, requires_grad=True)
        sh, r = m.edge_features(rij)
        h = m.embed(species)
        h_local = h[:nlocal]
        for k in range(self.num_layers):
            h_local = m.layer(k, h, sh, r, pi, pj, nlocal) + anchor
            if k + 1 < self.num_layers:
                h = HaloExchange.apply(h_local, ntotal, data, lmp_dev)
        e_local = m.readout(h_local, species[:nlocal])
        grads = torch.autograd.grad([e_local.sum()], [rij, anchor], allow_unused=True)
        g = grads[0] if grads[0] is not None else torch.zeros_like(rij)
        return e_local.detach(), g.detach()

    def _exchange_recomputing(self, m, data, species, pi, pj, rij, lmp_dev):
        """The chunked, recomputing evaluation (``facet.chunks``) with the same exchanges in
        the same order as ``_exchange_single_pass``: forward after each layer but the last,
        reverse in the backward pass, last layer first."""
        nlocal, ntotal = data.nlocal, data.ntotal
        chunk = self.chunk_edges
        by_centre = torch.argsort(pi, stable=True)
        pi, pj, x = pi[by_centre], pj[by_centre], rij[by_centre]
        hs = [m.embed(species)]
        h_local = hs[0][:nlocal]
        for k in range(self.num_layers):
            h_local = m.layer_forward_chunked(k, hs[k], x, pi, pj, nlocal, chunk)
            if k + 1 < self.num_layers:
                hs.append(halo_forward(h_local, ntotal, data, lmp_dev))
        h_last = h_local.detach().requires_grad_(True)
        e_local = m.readout(h_last, species[:nlocal])
        (g,) = torch.autograd.grad([e_local.sum()], [h_last])
        g_x = torch.zeros_like(x)
        for k in range(self.num_layers - 1, -1, -1):
            g_rij, g_h = m.layer_backward_chunked(k, hs[k], x, pi, pj, nlocal, g, chunk, k > 0)
            g_x += g_rij
            if k > 0:
                g = halo_reverse(g_h, nlocal, data, lmp_dev)
        return e_local.detach(), torch.zeros_like(rij).index_put_((by_centre,), g_x)


def halo_forward(h_local: torch.Tensor, ntotal: int, data, lmp_dev: torch.device) -> torch.Tensor:
    """All ``ntotal`` rows from the ``nlocal`` local ones: ghost rows copied from their owners
    (LAMMPS ``forward_exchange``), on the device of ``h_local``."""
    nlocal, width = h_local.shape
    full = torch.zeros(ntotal, width, dtype=h_local.dtype, device=lmp_dev)
    full[:nlocal] = h_local
    out = torch.empty_like(full)
    data.forward_exchange(full, out, width)
    return out.to(h_local.device)


def halo_reverse(grad: torch.Tensor, nlocal: int, data, lmp_dev: torch.device) -> torch.Tensor:
    """The local rows of ``grad`` [ntotal, d] with the ghost rows summed into their owners
    (LAMMPS ``reverse_exchange``)."""
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


def lammps_device(data) -> torch.device:
    """Where LAMMPS keeps this call's arrays: ``cuda:k`` when they are device arrays (CuPy, from
    a KOKKOS GPU build), else the host."""
    for array in (data.rij, data.elems):
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


def to_host(array) -> np.ndarray:
    """A LAMMPS array as numpy (CuPy arrays are copied from the GPU)."""
    return array.get() if hasattr(array, "__cuda_array_interface__") else np.asarray(array)


def to_lammps(t: torch.Tensor, lmp_dev: torch.device):
    """A result in the form LAMMPS' setters take: float64, contiguous; a numpy array for a host
    build, a tensor on LAMMPS' GPU for a KOKKOS GPU build (read through ``data_ptr``)."""
    t = t.to(device=lmp_dev, dtype=torch.float64).contiguous()
    return t.numpy() if lmp_dev.type == "cpu" else t


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


def recommended_comm_cutoff(r_max: float, num_layers: int, skin: float = 2.0) -> float:
    """Ghost cutoff (Å) for an L-layer model: L * r_max + skin, plus 1 Å so the shell can be
    verified from atom positions (outermost atoms lie up to ~one spacing inside the shell)."""
    return float(np.ceil(num_layers * r_max + skin + 1.0))
