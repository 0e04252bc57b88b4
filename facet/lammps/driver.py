"""Run Facet in LAMMPS from Python, serial or under ``mpirun -np N python job.py`` (mpi4py).

The model is loaded in-process (``pair_style mliap unified EXISTS 1``), one GPU per rank when it
was deployed for CUDA, and results (energy, per-atom energies, forces by atom id, stress in ASE's
convention) are gathered on every rank.

Units: LAMMPS ``metal`` (Å, eV, eV/Å, bar); stress is returned in eV/Å^3 (ASE sign convention).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.lammps import Prism
from ase.io.lammpsdata import write_lammps_data

from facet.errors import CheckpointError
from facet.lammps.deck import mliap_lines
from facet.lammps.mliap import FacetMLIAP


def _world():
    try:
        from mpi4py import MPI
    except ImportError:  # serial use without mpi4py
        return None
    return MPI.COMM_WORLD


def read_deployed(path: str | Path) -> FacetMLIAP:
    """A deployed ``*-mliap.pt`` file. It is a pickle by LAMMPS' design (``pair_style mliap
    unified`` unpickles it), so loading it can run code: load only files you made or trust.
    Checkpoints never take this road (``facet.checkpoint`` reads them without running code)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, FacetMLIAP):
        raise CheckpointError(
            f"{path} is neither a Facet checkpoint nor a file written by facet-deploy "
            f"(it holds a {type(obj).__name__})")
    return obj


def load_mliap(model: str | Path | FacetMLIAP, dtype: str = "float64", device: str = "cpu",
               comm=None) -> FacetMLIAP:
    """A ``FacetMLIAP`` from an object, a Facet checkpoint or a deployed ``*-mliap.pt``.

    Rank 0 reads the file (a checkpoint is frozen there once, not on every rank) and
    broadcasts the object over ``comm``; a file that cannot be read raises the same error on
    every rank.
    """
    if isinstance(model, FacetMLIAP):
        return model
    rank = comm.Get_rank() if comm is not None else 0
    obj, error = None, None
    if rank == 0:
        from facet.checkpoint import read_checkpoint

        try:
            try:
                read_checkpoint(model)  # a checkpoint? (read without running code)
                obj = FacetMLIAP.from_checkpoint(model, dtype, device)
            except CheckpointError:
                if not Path(model).is_file():
                    raise
                obj = read_deployed(model)
        except Exception as exc:  # every rank must learn about it, not wait in bcast
            error = exc
    if comm is not None:
        obj, error = comm.bcast((obj, error), root=0)
    if error is not None:
        raise error
    return obj


class FacetLammps:
    """A LAMMPS instance running a Facet model through ML-IAP unified.

    Args:
        model: Facet checkpoint, deployed ``*-mliap.pt`` or a ``FacetMLIAP`` object.
        comm: mpi4py communicator (default ``MPI.COMM_WORLD`` when mpi4py is importable).
        kokkos: run ``-k on t N -sf kk`` (needs a LAMMPS built with KOKKOS; N threads from
            ``kokkos_threads`` or the environment variable FACET_KOKKOS_THREADS, default 1).
        skin: neighbor skin (Å).
        log: LAMMPS log file (None: no log).
    """

    def __init__(self, model, comm=None, kokkos: bool = False, skin: float = 2.0,
                 log: str | None = None, screen: bool = False, dtype: str = "float64",
                 device: str = "cpu", kokkos_threads: int | None = None) -> None:
        import lammps
        import lammps.mliap

        self.comm = comm if comm is not None else _world()
        self.rank = self.comm.Get_rank() if self.comm is not None else 0
        self.mliap = load_mliap(model, dtype, device, self.comm)
        self.mliap.comm = self.comm  # errors on some ranks are raised on every rank
        self.elements = list(self.mliap.element_types)
        self.skin = float(skin)
        self.kokkos = kokkos
        args = ["-nocite", "-log", log or "none"]
        if not screen:
            args += ["-screen", "none"]
        if kokkos:
            threads = kokkos_threads or int(os.environ.get("FACET_KOKKOS_THREADS", "1"))
            # newton on (ML-IAP needs it) is set by load_atoms; mliap/kk asks for its full list
            args += ["-k", "on", "t", str(threads), "-sf", "kk"]
        kwargs: dict[str, Any] = {"cmdargs": args}
        if self.comm is not None:
            kwargs["comm"] = self.comm
        self.lmp = lammps.lammps(**kwargs)
        lammps.mliap.activate_mliappy(self.lmp)
        lammps.mliap.load_unified(self.mliap)
        if kokkos:  # mliap/kk has its own coupling module and its own EXISTS slot
            lammps.mliap.activate_mliappy_kokkos(self.lmp)
            lammps.mliap.load_unified_kokkos(self.mliap)
        self.prism: Prism | None = None
        self.natoms = 0

    # -- set-up --------------------------------------------------------------------------------
    def pair_lines(self) -> list[str]:
        """Plain path: ghost neighbour lists and a deep ghost shell; KOKKOS path: a one-cutoff
        halo (features of ghosts come from the per-layer exchange)."""
        return mliap_lines("EXISTS", self.elements, self.mliap.r_max, self.mliap.num_layers,
                           kokkos=self.kokkos, skin=self.skin)

    def load_atoms(self, atoms: Atoms) -> None:
        """Replace the system by ``atoms`` (types follow the model's element order)."""
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.elements))
        if unknown:
            raise ValueError(f"elements {unknown} are not in the model ({self.elements})")
        self.prism = Prism(atoms.cell.array, pbc=atoms.pbc)
        path = None
        if self.rank == 0:
            fd, path = tempfile.mkstemp(suffix=".data", prefix="facet-")
            os.close(fd)
            write_lammps_data(path, atoms, specorder=self.elements, atom_style="atomic",
                              masses=True, units="metal")
        if self.comm is not None:
            path = self.comm.bcast(path, root=0)
        boundary = " ".join("p" if p else "m" for p in atoms.pbc)
        self.lmp.commands_list([
            "clear",
            "units metal",
            "atom_style atomic",
            "atom_modify map yes",
            f"boundary {boundary}",
            "newton on",
            f"read_data {path}",
            *self.pair_lines(),
            f"neighbor {self.skin:g} bin",
            "neigh_modify every 1 delay 0 check yes",
            "thermo_style custom step pe pxx pyy pzz pyz pxz pxy",
            "compute facet_pe all pe/atom",
        ])
        if self.comm is not None:
            self.comm.Barrier()
        if self.rank == 0:
            Path(path).unlink(missing_ok=True)
        self.natoms = len(atoms)

    # -- results ---------------------------------------------------------------------------------
    def _gather(self, name: str, count: int) -> np.ndarray:
        data = self.lmp.gather_atoms(name, 1, count)
        return np.ctypeslib.as_array(data).reshape(self.natoms, count).copy()

    def results(self) -> dict[str, np.ndarray | float]:
        """Energy (eV), per-atom energies, forces (eV/Å) in the input frame and atom order, and
        stress (eV/Å^3, ASE Voigt order and sign) of the current configuration."""
        assert self.prism is not None
        energy = float(self.lmp.get_thermo("pe"))
        forces = self.prism.vector_to_ase(self._gather("f", 3))
        p = np.zeros((3, 3))
        for a, b in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
            p[a, b] = p[b, a] = self.lmp.get_thermo("p" + "xyz"[a] + "xyz"[b])
        rot = self.prism.rot_mat
        bar_per_ev_a3 = float(self.lmp.extract_global("nktv2p"))  # LAMMPS' own factor
        stress = -(rot @ p @ rot.T) / bar_per_ev_a3
        pe_atom = np.asarray(self.lmp.numpy.extract_compute("facet_pe", 1, 1)).copy()
        ids = np.asarray(self.lmp.numpy.extract_atom("id")).copy()[: len(pe_atom)]
        energies = np.zeros(self.natoms)
        energies[ids - 1] = pe_atom
        if self.comm is not None:
            energies = self.comm.allreduce(energies)
        voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return {"energy": energy, "energies": energies, "forces": forces, "stress": voigt}

    def evaluate(self, atoms: Atoms) -> dict[str, np.ndarray | float]:
        """``run 0`` on ``atoms``: energy, per-atom energies, forces and stress."""
        self.load_atoms(atoms)
        self.lmp.command("run 0")
        return self.results()

    def relax(self, atoms: Atoms, fmax: float = 1e-4, box: bool = True,
              max_iter: int = 2000) -> tuple[Atoms, float]:
        """Relax positions and, with ``box``, the cell with LAMMPS ``minimize``.

        The cell relaxes in every periodic direction, shear included (``fix box/relax`` on
        each periodic length and on each tilt whose two directions are periodic, uncoupled,
        to zero stress; an orthogonal box is made triclinic first): a bulk cell relaxes all
        six components, a slab periodic in x and y relaxes x, y and xy only.
        Returns the relaxed structure (in LAMMPS' frame: cell lower-triangular) and its
        energy (eV).
        """
        self.load_atoms(atoms)
        cmds = []
        if box:
            pbc = [bool(p) for p in atoms.pbc]
            if not any(pbc):
                raise ValueError("relax(box=True) needs a periodic direction; use box=False "
                                 "for a molecule or cluster")
            targets = [f"{d} 0.0" for d, periodic in zip("xyz", pbc, strict=True) if periodic]
            tilts = [f"{t} 0.0" for t, (a, b) in (("yz", (1, 2)), ("xz", (0, 2)),
                                                  ("xy", (0, 1))) if pbc[a] and pbc[b]]
            if tilts:
                cmds.append("change_box all triclinic")
            cmds.append(f"fix facet_relax all box/relax {' '.join(targets + tilts)} "
                        "couple none vmax 0.001")
        cmds += ["min_style cg", f"minimize 0.0 {fmax:g} {max_iter} {10 * max_iter}"]
        self.lmp.commands_list(cmds)
        return self.current_atoms(atoms), float(self.lmp.get_thermo("pe"))

    def current_atoms(self, template: Atoms) -> Atoms:
        """The LAMMPS configuration as ASE ``Atoms`` in LAMMPS' own (lower-triangular) frame."""
        lo, hi, xy, yz, xz, _, _ = self.lmp.extract_box()
        cell = np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])
        pos = self._gather("x", 3)
        out = Atoms(template.get_chemical_symbols(), positions=pos, cell=cell, pbc=template.pbc)
        out.wrap()
        return out

    def close(self) -> None:
        self.lmp.close()

    def __enter__(self) -> FacetLammps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
