"""The object LAMMPS loads for ``pair_style mliap unified <file>.pt <ghostneigh>``.

It carries the frozen TorchScript contract as bytes plus metadata, is unpickled by LAMMPS'
embedded Python (``torch.load(weights_only=False)``: a deployed file is a pickle by LAMMPS'
design, so load only files you made or trust), loads the TorchScript lazily on the rank's
device, and in ``compute_forces`` maps LAMMPS' pair list onto the contract: species =
``elems``, pairs = ``pair_i``/``pair_j``, ``rij = x_j - x_i``; it writes ``dE_local/drij`` with
``update_pair_forces`` (LAMMPS applies them to local and ghost atoms and folds ghost forces
back with ``newton pair on``; the virial follows from the pair forces) and the per-atom
energies of the listed local atoms.

Two paths, chosen per call from what LAMMPS offers:

- **plain** (``pair_style mliap``, any ML-IAP + PYTHON build): multi-layer exactness on a rank
  needs ghost atoms' features, hence ``ghostneigh = 1`` and a ghost shell (``comm_modify cutoff``)
  of at least ``num_layers * r_max + skin``; both are checked (``facet.lammps.ghost_check``).
- **kokkos** (``-k on ... -sf kk``, ``pair_style mliap/kk``, whose data offers
  ``forward_exchange``/``reverse_exchange``): the model runs layer by layer on local atoms only;
  between layers ghost features are refreshed from their owners (forward exchange), and in the
  backward pass ghost gradients are summed into the owners (reverse exchange). Only a one-cutoff
  halo is needed (``ghostneigh = 0``, default comm cutoff) and no ghost features are computed.

Errors never hang a multi-rank job (``facet.lammps.ranks``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from facet.chunks import resolve_chunking
from facet.errors import FacetLAMMPSError
from facet.jitcompat import load_bytes
from facet.lammps import ranks
from facet.lammps.deck import recommended_comm_cutoff
from facet.lammps.exchange import (
    HaloExchange,
    field,
    halo_forward,
    halo_reverse,
    lammps_device,
    read,
    to_host,
    write_results,
)

try:  # the base class exists only where LAMMPS' Python module is installed
    from lammps.mliap.mliap_unified_abc import MLIAPUnified
except ImportError:  # pragma: no cover - lets facet-deploy write files without LAMMPS
    class MLIAPUnified:  # type: ignore[no-redef]
        def __init__(self) -> None:
            self.interface = None

logger = logging.getLogger("facet.lammps")


def _console() -> logging.Logger:
    """``logger``, printing INFO lines to LAMMPS' screen (stdout) unless the host program
    configured logging itself."""
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return logger


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
    """ML-IAP unified model wrapping a frozen Facet contract (see the module docstring).

    Build one from a checkpoint with ``FacetMLIAP.from_checkpoint(path)``; ``torch.save`` it to
    a ``.pt`` file for ``pair_style mliap unified``, or hand it over in-process with
    ``lammps.mliap.load_unified`` (``facet.lammps.driver.FacetLammps`` does).

    Args:
        script_bytes: TorchScript of ``facet.contract.FacetPotential`` (plain path).
        layers_bytes: TorchScript of the model with its per-layer entry points (KOKKOS path).
        elements: chemical symbols, in the model's species order.
        r_max: cutoff radius (Å); LAMMPS' pair cutoff is ``2 * rcutfac = r_max``.
        num_layers: message-passing layers (the receptive field is ``num_layers * r_max``).
        dtype, device: precision and device the model runs in (``cuda``: one GPU per rank).
        chunk_edges, single_pass_edges: the recomputing evaluation (``facet.chunks``).
        aoti_bytes: an AOTInductor package (``facet.aoti``) to run instead of the TorchScript
            (then ``script_bytes`` and ``layers_bytes`` may be empty): its ``energy_forces``
            program on the plain path, its per-layer programs on the KOKKOS path and above
            ``single_pass_edges``. No TorchScript is loaded.
    """

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
        aoti_bytes: bytes | None = None,
    ) -> None:
        super().__init__()  # the base class's arguments changed between LAMMPS versions
        self.element_types = list(elements)
        self.ndescriptors = 1  # unused by this model, required by ML-IAP
        self.nparams = 1
        self.rcutfac = 0.5 * float(r_max)  # LAMMPS' pair cutoff is 2 * rcutfac
        self.script_bytes = script_bytes
        self.layers_bytes = layers_bytes
        self.aoti_bytes = aoti_bytes
        self.r_max = float(r_max)
        self.num_layers = int(num_layers)
        self.dtype_name = dtype
        self.device_name = device
        self.metadata = dict(metadata or {})
        # a file with facet.ops' fused kernels keeps far less for its single pass's backward
        # (facet.chunks.default_chunking)
        self.chunk_edges, self.single_pass_edges = resolve_chunking(
            device, chunk_edges, single_pass_edges,
            fused=bool(int(self.metadata.get("fused_kernels", 0))))
        self.check_ghost_shell = True
        self._init_runtime()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        dtype: str = "float64",
        device: str = "cpu",
        chunk_edges: int | None = None,
        single_pass_edges: int | None = None,
        format: str = "torchscript",
        aoti_package: bytes | None = None,
        log=None,
        fused: bool | None = None,
    ) -> FacetMLIAP:
        """Load a Facet checkpoint and freeze it into a ``FacetMLIAP``: TorchScript
        (``facet.freeze``, ``format="torchscript"``) or an AOTInductor package (``facet.aoti``,
        ``format="aoti"``; ``aoti_package`` = one already built from this checkpoint, else it
        is compiled here, minutes). ``fused``: the tensor products call ``facet.ops``' CPU
        kernels (loaded where the object runs); None = for CPU objects where they build."""
        from facet.checkpoint import load_model

        model = load_model(checkpoint, dtype=getattr(torch, dtype))
        cfg = model.config
        metadata = {
            "checkpoint": str(Path(checkpoint).resolve()),
            "provenance": getattr(model, "provenance", {}),
            "config": cfg.to_dict(),
            "torch_version": str(torch.__version__),
            "format": format,
        }
        if format == "aoti":
            from facet.aoti import build_package, read_metadata

            package = aoti_package or build_package(
                model, device=device, log=log, fused=False if device != "cpu" else fused)
            metadata["fused_kernels"] = int(read_metadata(package).get("fused_kernels", 0))
            script, layers = b"", b""
        elif format == "torchscript":
            import facet.ops
            from facet.freeze import script_model, script_potential, to_bytes

            fused = facet.ops.wanted(fused, device)
            metadata["fused_kernels"] = facet.ops.OPS_VERSION if fused else 0
            package, script, layers = None, to_bytes(script_potential(model, fused)), \
                to_bytes(script_model(model, fused))
        else:
            raise ValueError(f"format must be 'torchscript' or 'aoti', not {format!r}")
        return cls(
            script,
            layers,
            elements=cfg.elements,
            r_max=cfg.r_max,
            num_layers=cfg.num_interactions,
            dtype=dtype,
            device=device,
            metadata=metadata,
            chunk_edges=chunk_edges,
            single_pass_edges=single_pass_edges,
            aoti_bytes=package,
        )

    # -- state that must not be pickled --------------------------------------------------------
    def _init_runtime(self) -> None:
        self._module = None
        self._layers = None
        self._device = None
        self.comm = None  # LAMMPS' communicator (mpi4py), when a Python driver knows it
        self.path = None
        self._checked_ntotal = -1
        self._n_computed = 0
        self.calls = 0
        self.model_seconds = 0.0  # time inside the frozen module (and its tensor conversions)
        self.atom_counts = (0, 0)  # (local atoms, atoms whose features were computed), last call
        self.evaluation = ""  # "single pass" or "recomputing" (facet.chunks), last call
        self.malloc_setting = ""  # what facet.lammps.allocator did (CPU), for the log
        self._jit_optimize = True  # TorchScript's optimising executor (set by _load)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_module", "_layers", "_device", "_jit_optimize", "interface", "comm"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.interface = None
        # objects saved before these options existed
        self.chunk_edges, self.single_pass_edges = resolve_chunking(
            self.device_name, state.get("chunk_edges"), state.get("single_pass_edges"))
        self.check_ghost_shell = state.get("check_ghost_shell", True)
        self.aoti_bytes = state.get("aoti_bytes")
        self._init_runtime()

    # -- ML-IAP interface ----------------------------------------------------------------------
    def compute_descriptors(self, data) -> None:
        pass

    def compute_gradients(self, data) -> None:
        pass

    def compute_forces(self, data) -> None:
        """One evaluation. Configuration problems found on any subset of ranks stop every rank
        (raised together where the communicator is known, else the job is aborted), never a
        hang; so does an unexpected failure during the evaluation."""
        try:
            problem = self._configuration_problem(data)
        except Exception as exc:  # an unexpected failure of the checks themselves
            problem = f"{type(exc).__name__}: {exc}"
        if self.comm is not None:
            problem = ranks.agree(problem, self.comm)
            if problem is not None:
                raise FacetLAMMPSError(problem)  # on every rank: LAMMPS' error->all returns
        elif problem is not None:
            ranks.stop(FacetLAMMPSError(problem))
        try:
            with torch.jit.optimized_execution(self._jit_optimize):
                if self._exchange_path(data):
                    self._compute_exchange(data)
                else:
                    self._compute_plain(data)
        except Exception as exc:
            ranks.stop(exc)

    # -- checks (local to the rank, no collectives) --------------------------------------------
    def _exchange_path(self, data) -> bool:
        return hasattr(data, "forward_exchange") and data.natomneigh <= data.nlistatoms

    def _configuration_problem(self, data) -> str | None:
        """What is wrong with this call's set-up on this rank, or None. Loads the model."""
        if self._module is None:
            self._load()
        if self._exchange_path(data):
            self._announce("kokkos (per-layer halo exchange)")
            if self.aoti_bytes and not self._module.package.has_layers():
                return ("this deployed file's AOTInductor package has no per-layer programs, "
                        "which the KOKKOS path needs: deploy it again with "
                        "`facet-deploy --format aoti` (all programs), or run without KOKKOS")
            return None
        if hasattr(data, "forward_exchange"):
            self._announce("kokkos data with ghost neighbour lists (plain algorithm)")
        else:
            self._announce("plain (ghost features from ghostneigh lists)")
        if self.num_layers <= 1 or data.ntotal <= data.nlocal or data.npairs == 0:
            return None
        if data.natomneigh <= data.nlistatoms:
            return (f"this Facet model has {self.num_layers} message-passing layers and needs "
                    "the neighbour lists of ghost atoms: use `pair_style mliap unified <file> 1`"
                    " (ghostneigh = 1), or the KOKKOS path (`-k on ... -sf kk`, ghostneigh 0)")
        return self._ghost_shell_problem(data)

    def _ghost_check_on(self) -> bool:
        from facet.lammps import ghost_check

        return self.check_ghost_shell and ghost_check.enabled()

    def _ghost_shell_problem(self, data) -> str | None:
        from facet.lammps import ghost_check

        if not self._ghost_check_on() or data.ntotal == self._checked_ntotal:
            return None
        pair_i, pair_j, rij = (to_host(field(data, k)) for k in ("pair_i", "pair_j", "rij"))
        report = ghost_check.check_ghost_shell(data.nlocal, data.ntotal, pair_i, pair_j, rij,
                                               self.r_max, self.num_layers)
        if not report.ok:
            need = self.num_layers * self.r_max
            return (
                f"the ghost-atom shell is {report.deficit:.2f} Å too thin for this "
                f"{self.num_layers}-layer Facet model (receptive field {need:g} Å): results "
                "near subdomain or periodic boundaries would be wrong. Add `comm_modify cutoff "
                f"{recommended_comm_cutoff(self.r_max, self.num_layers):g}` (at least "
                "num_layers * r_max + neighbor skin + 1 Å) to the input deck, or use the "
                "KOKKOS path (`-k on ... -sf kk`, ghostneigh 0), which needs no deep shell. "
                "If the deck already has that cutoff and the system simply ends in vacuum "
                "before it (a small cluster split over ranks), set FACET_GHOST_CHECK=0"
            )
        self._checked_ntotal = data.ntotal
        self._n_computed = report.n_checked
        return None

    def _load(self) -> None:
        from facet.lammps.allocator import tune_malloc

        self.malloc_setting = tune_malloc() if self.device_name == "cpu" else ""
        # TorchScript's optimising executor specialises its graphs on the shapes it profiled;
        # on the CPU, where it fuses nothing, the pair count changing every MD step makes it
        # slower than the plain interpreter (steps 1.05-1.49x, benchmarks/README; the
        # native plugin's `jit_optimize no` default). Kept on for CUDA.
        jit_env = os.environ.get("FACET_JIT_OPTIMIZE", "").strip().lower()
        self._jit_optimize = (jit_env in ("1", "yes", "on", "true") if jit_env
                              else self.device_name != "cpu")
        self._device = pick_device(self.device_name)
        self._dtype = getattr(torch, self.dtype_name)
        if self.aoti_bytes:
            from facet.aoti import AOTIPotential

            self._module = AOTIPotential(self.aoti_bytes, self._device, self.chunk_edges,
                                         self.single_pass_edges)
            return
        self._module = load_bytes(self.script_bytes, self._device)
        self._module.eval()
        self._module.chunk_edges = self.chunk_edges
        self._module.single_pass_edges = self.single_pass_edges

    def _announce(self, path: str) -> None:
        if self.path == path:
            return
        self.path = path
        if ranks.job_rank() != 0:
            return
        chunking = (f"recomputing in chunks of {self.chunk_edges} pairs above "
                    f"{self.single_pass_edges} pairs per rank" if self.chunk_edges > 0
                    else "single pass")
        if self.aoti_bytes and path.startswith("kokkos (per") and self._device.type == "cpu":
            chunking = (f"layer programs in chunks of {self.chunk_edges} pairs"
                        if self.chunk_edges > 0 else "layer programs in one chunk")
        engine = "AOTInductor package" if self.aoti_bytes else (
            "TorchScript, executor " + ("optimising" if self._jit_optimize else
                                        "plain (FACET_JIT_OPTIMIZE=1 optimises)"))
        _console().info(
            f"Facet ML-IAP: {path} path ({self.num_layers} layers, r_max {self.r_max:g} Å, "
            f"{self.dtype_name} on {self._device}, {engine}; {chunking}); LAMMPS types map to "
            f"{' '.join(self.element_types)} by the names in pair_coeff")
        if self.malloc_setting:
            _console().info(f"Facet ML-IAP: memory: {self.malloc_setting}")
        if "plain" in path and not self._ghost_check_on():
            _console().warning(
                "Facet ML-IAP: the ghost-shell check is switched off (FACET_GHOST_CHECK=0): "
                "results near subdomain borders are right only if `comm_modify cutoff` is at "
                f"least {self.num_layers * self.r_max:g} Å + the neighbor skin")

    # -- plain path: ghost features from ghost neighbour lists ---------------------------------
    def _compute_plain(self, data) -> None:
        nlocal, ntotal, npairs = data.nlocal, data.ntotal, data.npairs
        lmp_dev = lammps_device(data)
        dev = self._device
        if npairs == 0 or data.nlistatoms == 0:
            # no pairs on this rank: isolated atoms carry only their reference energies
            self._isolated_energies(data, lmp_dev)
            return
        t0 = time.perf_counter()
        species = read(data, "elems", dev, torch.long, ntotal).clamp(min=0)
        pi = read(data, "pair_i", dev, torch.long, npairs)
        pj = read(data, "pair_j", dev, torch.long, npairs)
        rij = read(data, "rij", dev, self._dtype, npairs, 3)
        self.evaluation = self._evaluation(npairs)
        e_local, dE_drij = self._module(species, pi, pj, rij, nlocal)
        iatoms = read(data, "iatoms", dev, torch.long, data.natomneigh)[: data.nlistatoms]
        eatoms = e_local.detach()[iatoms]
        self.model_seconds += time.perf_counter() - t0
        self.calls += 1
        # atoms whose features the contract computes: those within L-1 hops of a local atom
        self.atom_counts = (nlocal, self._n_computed or ntotal)
        write_results(data, eatoms, dE_drij.detach(), lmp_dev)

    def _evaluation(self, npairs: int) -> str:
        """Which evaluation a call with ``npairs`` pairs takes (the contract decides the same)."""
        if self.chunk_edges > 0 and npairs > self.single_pass_edges:
            return "recomputing"
        return "single pass"

    def _isolated_energies(self, data, lmp_dev: torch.device) -> None:
        n = data.nlistatoms
        dev = self._device
        iatoms = read(data, "iatoms", dev, torch.long, data.natomneigh)[:n]
        species = read(data, "elems", dev, torch.long, data.ntotal)[iatoms].clamp(min=0)
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        rij = torch.zeros(0, 3, dtype=self._dtype, device=dev)
        e, _ = self._module(species, empty, empty, rij, n)
        self.atom_counts = (data.nlocal, n)
        write_results(data, e, None, lmp_dev)

    # -- kokkos path: layer by layer with halo exchange ---------------------------------------
    def _compute_exchange(self, data) -> None:
        """Every rank runs every exchange, also with zero atoms, ghosts or pairs (else the job
        hangs): nothing here returns early."""
        if self.aoti_bytes:
            self._layers = self._module
        elif self._layers is None:
            self._layers = load_bytes(self.layers_bytes, self._device)
            self._layers.eval()
        m = self._layers
        dev, dt = self._device, self._dtype
        lmp_dev = lammps_device(data)
        ntotal, npairs = data.ntotal, data.npairs
        t0 = time.perf_counter()
        species = read(data, "elems", dev, torch.long, ntotal).clamp(min=0)
        pi = read(data, "pair_i", dev, torch.long, npairs)
        pj = read(data, "pair_j", dev, torch.long, npairs)
        rij = read(data, "rij", dev, dt, npairs, 3)
        self.evaluation = self._evaluation(npairs)
        if self.aoti_bytes and dev.type == "cpu" and self.chunk_edges > 0:
            # the package's layer programs recompute their layer in the backward pass whatever
            # the chunking: on the CPU chunks cost nothing extra and their small tensors are
            # faster (1.33x at 10.5k pairs per rank, benchmarks/README), so always chunks there
            # (as the native plugin); `chunk_edges 0` gives one chunk
            self.evaluation = "recomputing"
        if self.aoti_bytes:
            e_local, dE_drij = self._exchange_aoti(m, data, species, pi, pj, rij, lmp_dev)
        elif self.evaluation == "recomputing":
            e_local, dE_drij = self._exchange_recomputing(m, data, species, pi, pj, rij, lmp_dev)
        else:
            e_local, dE_drij = self._exchange_single_pass(m, data, species, pi, pj, rij, lmp_dev)
        self.model_seconds += time.perf_counter() - t0
        self.calls += 1
        self.atom_counts = (data.nlocal, data.nlocal)
        iatoms = read(data, "iatoms", dev, torch.long, data.natomneigh)[: data.nlistatoms]
        write_results(data, e_local.detach()[iatoms], dE_drij, lmp_dev)

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
        # the edge data every layer shares, once (files deployed before edge_slots existed:
        # per layer)
        padded = hasattr(m, "edge_slots")
        if padded:
            slots, nbr_pad, y_pad, basis_pad = m.edge_slots(sh, r, pi, pj, nlocal)
        for k in range(self.num_layers):
            if padded:
                h_local = m.layer_padded(k, h, nbr_pad, y_pad, r, slots, basis_pad) + anchor
            else:
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

    def _exchange_aoti(self, pot, data, species, pi, pj, rij, lmp_dev):
        """The KOKKOS path over an AOTInductor package's per-layer programs
        (``facet.aoti.AOTIPotential``): forward layer by layer (in chunks of ``chunk_edges``
        pairs: on the CPU always, on CUDA above ``single_pass_edges``, else one chunk; one
        chunk with ``chunk_edges <= 0``) with a forward exchange after each
        layer but the last, then the VJP programs last layer first with a reverse exchange
        before each earlier layer; the same exchanges in the same order as the TorchScript
        paths. The VJP programs recompute their layer, so no autograd state crosses calls."""
        from facet.aoti import ChunkPlan

        nlocal, ntotal = data.nlocal, data.ntotal
        by_centre = torch.argsort(pi, stable=True)
        pi, pj, x = pi[by_centre], pj[by_centre], rij[by_centre]
        chunk = self.chunk_edges if self.evaluation == "recomputing" else max(int(pi.shape[0]), 1)
        plan = ChunkPlan(pi, pj, nlocal, chunk)
        hs = [pot.embed(species)]
        h_local = hs[0][:nlocal]
        for k in range(self.num_layers):
            h_local = pot.layer_forward_chunked(k, hs[k], plan, x, nlocal)
            if k + 1 < self.num_layers:
                hs.append(halo_forward(h_local, ntotal, data, lmp_dev))
        e_local, g = pot.readout_vjp(h_local, species[:nlocal])
        g_x = torch.zeros_like(x)
        for k in range(self.num_layers - 1, -1, -1):
            g_rij, g_h = pot.layer_backward_chunked(k, hs[k], plan, x, g, k > 0)
            g_x += g_rij
            if k > 0:
                g = halo_reverse(g_h, nlocal, data, lmp_dev)
        return e_local, torch.zeros_like(rij).index_put_((by_centre,), g_x)
