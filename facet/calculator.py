"""ASE calculator for Facet models, built on the frozen edge-list contract.

Energies in eV, forces in eV/Å, stress in eV/Å^3 (ASE sign convention, Voigt order
xx, yy, zz, yz, xz, xy).
"""

from __future__ import annotations

import os

import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

import facet.ops
from facet.checkpoint import load_model
from facet.chunks import resolve_chunking
from facet.contract import (
    FacetPotential,
    forces_from_pair_gradients,
    upper_symmetric,
    virial_from_pair_gradients,
)
from facet.graph import build_graph
from facet.model import Facet, with_dtype


class FacetCalculator(Calculator):
    """Energy, free energy, per-atom energies, forces and stress from a Facet model.

    Args:
        model: a ``Facet`` module, a checkpoint path, or an AOTInductor package (a ``.pt2``
            path from ``facet-deploy --format aoti``, or its bytes); None with ``package``.
        dtype: ``"float64"`` (default, for reference numbers) or ``"float32"`` (faster); a
            package runs in the dtype it was compiled for. A
            module in another dtype is evaluated through a copy rebuilt in this one
            (``facet.model.with_dtype``): later changes to its weights do not reach the copy.
        device: torch device string.
        backend: ``"eager"`` (default), ``"torchscript"`` (the TorchScript-compiled contract,
            same numbers; ``script=True`` says the same) or ``"aoti"`` (an AOTInductor package,
            ``facet.aoti``: about 2x faster on CPUs, no TorchScript). With ``"aoti"``, pass the
            package as ``package`` (path or bytes) or as ``model`` (a ``.pt2`` path); without one
            it is compiled here from ``model`` (minutes; ``facet-deploy --format aoti`` builds
            it once).
        package: the AOTInductor package for ``backend="aoti"``.
        script: evaluate the TorchScript-compiled contract instead of the eager module (same
            numbers; what LAMMPS runs).
        frozen: an already frozen contract (e.g. ``facet.freeze.from_bytes`` of a deployed
            file's ``script_bytes``) to evaluate instead of ``model``'s own; ``model`` still
            supplies the elements, cutoff and graph settings.
        fused: evaluate the tensor products with ``facet.ops``' fused CPU kernels (3-5x faster
            tensor products, same numbers to rounding; built once per machine, ~10 s); None
            (default) = on for the CPU (eager, TorchScript, or a package compiled here) where
            they build and ``FACET_FUSED_KERNELS`` is not 0. The module passed in is left as
            it was.
        chunk_edges, single_pass_edges: above ``single_pass_edges`` pairs, evaluate in chunks
            of ``chunk_edges`` pairs, recomputing in the backward pass (``facet.chunks``: same
            numbers, far less memory); None = the device's default, ``chunk_edges=0`` = never.
            With the fused kernels on the CPU and both None, the single pass extends, the first
            time a structure needs it, to what fits half the available memory (at most 2 GiB;
            ``facet.memory.memory_sized_single_pass``).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: Facet | str | os.PathLike | None,
        dtype: str | torch.dtype | None = None,
        device: str = "cpu",
        script: bool = False,
        frozen: torch.jit.ScriptModule | None = None,
        chunk_edges: int | None = None,
        single_pass_edges: int | None = None,
        backend: str | None = None,
        package: str | os.PathLike | bytes | None = None,
        fused: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self._inference: facet.ops.InferenceState | None = None
        if isinstance(model, (bytes, bytearray)) or (
                isinstance(model, (str, os.PathLike)) and str(model).endswith(".pt2")):
            package, model = model, None
            backend = backend or "aoti"
        if package is not None:
            backend = backend or "aoti"
        backend = backend or ("torchscript" if script else "eager")
        if backend not in ("eager", "torchscript", "aoti"):
            raise ValueError(f"backend must be 'eager', 'torchscript' or 'aoti', not {backend!r}")
        if package is not None and backend != "aoti":
            raise ValueError("an AOTInductor package needs backend='aoti'")
        self.backend = backend
        if backend == "aoti" and package is not None:
            self._init_package(package, dtype, chunk_edges, single_pass_edges)
            return
        self.dtype = getattr(torch, dtype or "float64") if not isinstance(dtype, torch.dtype) \
            else dtype
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, dtype=self.dtype)
        else:
            model = with_dtype(model, self.dtype)  # a copy rebuilt in dtype, if it differs
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.potential = FacetPotential(self.model)
        # a frozen contract is evaluated as given
        self.fused = frozen is None and facet.ops.wanted(fused, self.device.type)
        if frozen is not None:
            self.potential = frozen.to(self.device)
        elif backend == "torchscript":
            from facet.freeze import script_potential

            self.potential = script_potential(self.model, fused=self.fused)
        elif backend == "aoti":
            from facet.aoti import build_package

            self._init_package(build_package(self.model, device=self.device.type,
                                             fused=self.fused), None,
                               chunk_edges, single_pass_edges)
            return
        self.potential.chunk_edges, self.potential.single_pass_edges = resolve_chunking(
            self.device.type, chunk_edges, single_pass_edges, fused=self.fused)
        # fused kernels on the CPU, chunking left to us: above the default single pass, size it
        # by memory once (facet.memory; as the native plugin does)
        self._size_single_pass = (self.fused and self.device.type == "cpu"
                                  and chunk_edges is None and single_pass_edges is None)
        if isinstance(self.potential, FacetPotential):
            # inference: the weights enter as constants, so autograd keeps only what dE/drij
            # needs, not what weight gradients would (as the frozen module does); the module
            # passed in gets its weights' gradient flags and kernels back after each call
            self._inference = facet.ops.InferenceState(self.model, self.fused)

    def _single_pass_limit(self, n_pairs: int) -> None:
        """Extend the single pass to the pairs that fit the memory budget, the first time a
        structure has more pairs than the default single pass."""
        if not self._size_single_pass or n_pairs <= self.potential.single_pass_edges:
            return
        from facet.memory import memory_sized_single_pass

        self._size_single_pass = False
        with facet.ops.fused(self.model, True):
            self.potential.single_pass_edges = memory_sized_single_pass(
                self.model, self.potential.single_pass_edges)

    def _init_package(self, package, dtype, chunk_edges, single_pass_edges) -> None:
        """Run an AOTInductor package (``facet.aoti.AOTIPotential``); the config, elements and
        cutoff come from its metadata."""
        from facet.aoti import AOTIPotential
        from facet.config import FacetConfig

        self.potential = AOTIPotential(package, self.device, chunk_edges, single_pass_edges)
        self.dtype = self.potential.dtype
        if dtype is not None and (getattr(torch, dtype) if isinstance(dtype, str) else dtype) \
                != self.dtype:
            raise ValueError(f"this package was compiled for {self.potential.meta['dtype']}, "
                             f"not {dtype}: build one in that dtype (facet-deploy --dtype)")
        self.model = None
        self._size_single_pass = False
        self.fused = bool(int(self.potential.meta.get("fused_kernels", 0)))
        self.config = FacetConfig.from_dict(self.potential.meta["config"])

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        cfg = self.config
        graph = build_graph(atoms, cfg.elements, cfg.r_max, cfg.min_distance)
        dev, dt = self.device, self.dtype
        species = torch.as_tensor(graph.species, device=dev)
        centre = torch.as_tensor(graph.centre, device=dev)
        neighbour = torch.as_tensor(graph.neighbour, device=dev)
        rij = torch.as_tensor(graph.rij, dtype=dt, device=dev)
        n = graph.num_atoms
        if self.model is not None:
            self._single_pass_limit(int(centre.shape[0]))
        if self._inference is not None:
            with self._inference:
                e_atoms, dE_drij = self.potential(species, centre, neighbour, rij, n)
        else:
            e_atoms, dE_drij = self.potential(species, centre, neighbour, rij, n)
        e_atoms = e_atoms.detach().to(torch.float64)
        g = dE_drij.detach().to(torch.float64)
        rij64 = rij.detach().to(torch.float64)
        forces = forces_from_pair_gradients(g, centre, neighbour, n)
        energies = e_atoms.cpu().numpy()
        self.results["energies"] = energies
        self.results["energy"] = float(energies.sum())
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = forces.cpu().numpy()
        if atoms.pbc.all():
            stress = upper_symmetric(virial_from_pair_gradients(rij64, g)) / atoms.get_volume()
            stress = stress.cpu().numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        elif properties and "stress" in properties:
            raise PropertyNotImplementedError("stress needs a fully periodic cell")

