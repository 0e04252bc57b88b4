"""Measured rotation and inversion error of a Facet model (the S2 layer's grid aliasing).

Everything in Facet is exactly E(3)-equivariant except the S2-grid MLP: a pointwise nonlinearity
creates frequencies above lmax that the quadrature aliases back (``facet.s2``). This module
measures the resulting error the way users see it: evaluate a structure, rotate (or invert, or
mirror) it rigidly, evaluate again and compare energies and rotated-back forces, in float64.

``rotation_error(model)`` is cheap (a 32-atom cell, 3 random rotations, inversion and one
reflection: six evaluations, about 0.3 s for the shipped model) so that deployment and training
can call it; compare its result with ``ENERGY_BOUND`` and ``FORCE_BOUND``. The error depends
on the structure (it grows with distortion and compression: more curvature of the grid MLP's
nonlinearity is visited), so one probe cell is a spot check, not a guarantee;
``benchmarks/bench_equivariance.py`` measures a wider set.

Units: energies in eV (errors per atom), forces in eV/Å, lengths in Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, fcc111
from ase.data import atomic_numbers, covalent_radii, reference_states
from scipy.spatial.transform import Rotation

#: Largest acceptable rotation/inversion error of the energy of a trained model (eV/atom).
ENERGY_BOUND = 1e-5
#: Largest acceptable rotation/inversion error of a force component of a trained model (eV/Å).
FORCE_BOUND = 1e-3


@dataclass
class SymmetryError:
    """Largest errors over the transforms tried.

    Attributes:
        energy_per_atom: max |E(Qx) - E(x)| / N (eV/atom).
        forces: max |F(Qx) - Q F(x)| over atoms and components (eV/Å).
        worst: name of the transform with the largest force error.
        per_transform: name -> (energy error eV/atom, force error eV/Å).
    """

    energy_per_atom: float
    forces: float
    worst: str
    per_transform: dict[str, tuple[float, float]]

    def within_bounds(
        self, energy_bound: float = ENERGY_BOUND, force_bound: float = FORCE_BOUND
    ) -> bool:
        """True when both errors are at most the bounds (eV/atom, eV/Å)."""
        return self.energy_per_atom <= energy_bound and self.forces <= force_bound


def nearest_neighbour_distance(symbol: str) -> float:
    """A plausible nearest-neighbour distance (Å) of an element in a close-packed solid: from
    ASE's reference fcc/bcc/hcp lattice constant when there is one, else twice the covalent
    radius."""
    z = atomic_numbers[symbol]
    ref = reference_states[z] or {}
    sym, a = ref.get("symmetry"), ref.get("a")
    if sym == "fcc" and a:
        return a / math.sqrt(2.0)
    if sym == "bcc" and a:
        return a * math.sqrt(3.0) / 2.0
    if sym == "hcp" and a:
        return float(a)
    return 2.0 * float(covalent_radii[z])


def probe_structure(
    elements: list[str],
    kind: str = "bulk",
    seed: int = 0,
    rattle: float = 0.15,
    scale: float = 1.0,
) -> Atoms:
    """A 32-atom test structure of random ``elements``: ``"bulk"`` (a 2x2x2 cubic fcc cell at the
    composition's mean nearest-neighbour distance times ``scale``, randomly strained by ~2 % and
    sheared) or ``"slab"`` (an fcc(111) slab, 2x2x8 atoms, 6 Å of vacuum on each side); positions
    rattled by ``rattle`` Å (Gaussian, per component). The default 0.15 Å lies between the
    largest rattle of the EMT training set (0.1 Å) and the thermal displacement of a metal near
    1500 K (~0.2 Å): a moderately hot cell, on which the aliasing error is larger than at
    equilibrium (it grows quickly with the distortion)."""
    rng = np.random.default_rng(seed)
    symbols = list(rng.choice(list(elements), size=32))
    d = float(np.mean([nearest_neighbour_distance(s) for s in symbols]))
    a = d * math.sqrt(2.0) * scale
    if kind == "bulk":
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
        strain = 0.02 * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    elif kind == "slab":
        atoms = fcc111("Cu", size=(2, 2, 8), a=a, vacuum=6.0)
    else:
        raise ValueError(f"probe_structure kind must be 'bulk' or 'slab', not {kind!r}")
    atoms.set_chemical_symbols(symbols)
    atoms.positions += rattle * rng.standard_normal(atoms.positions.shape)
    return atoms


def orthogonal_transforms(n_rotations: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """``n_rotations`` random rotations (uniform on SO(3)), the inversion and one reflection
    (a random rotation times a mirror), as 3x3 matrices Q acting on column vectors."""
    rots = Rotation.random(max(n_rotations, 1), random_state=seed).as_matrix()
    out = {f"rotation {k}": rots[k] for k in range(n_rotations)}
    out["inversion"] = -np.eye(3)
    out["reflection"] = rots[0] @ np.diag([1.0, -1.0, 1.0])
    return out


def transformed(atoms: Atoms, q: np.ndarray) -> Atoms:
    """``atoms`` with positions and cell mapped by the orthogonal matrix ``q``."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    out.positions = atoms.positions @ q.T
    return out


def symmetry_error(
    model: object,
    atoms: Atoms | None = None,
    n_rotations: int = 3,
    seed: int = 0,
) -> SymmetryError:
    """Max rotation/inversion/reflection error of energy per atom (eV/atom) and forces (eV/Å) of
    ``model`` (a ``Facet`` module or checkpoint path, evaluated in float64) on ``atoms``
    (default: ``probe_structure(model's elements, seed=seed)``)."""
    from facet.calculator import FacetCalculator

    calc = FacetCalculator(model, dtype="float64")  # type: ignore[arg-type]
    if atoms is None:
        atoms = probe_structure(calc.config.elements, "bulk", seed=seed)

    def energy_forces(a: Atoms) -> tuple[float, np.ndarray]:
        a = a.copy()
        a.calc = calc
        return float(a.get_potential_energy()), a.get_forces()

    e0, f0 = energy_forces(atoms)
    n = len(atoms)
    per: dict[str, tuple[float, float]] = {}
    for name, q in orthogonal_transforms(n_rotations, seed).items():
        e, f = energy_forces(transformed(atoms, q))
        per[name] = (abs(e - e0) / n, float(np.abs(f - f0 @ q.T).max()))
    worst = max(per, key=lambda k: per[k][1])
    return SymmetryError(
        energy_per_atom=max(v[0] for v in per.values()),
        forces=max(v[1] for v in per.values()),
        worst=worst,
        per_transform=per,
    )


def rotation_error(
    model: object, atoms: Atoms | None = None, n_rotations: int = 3, seed: int = 0
) -> tuple[float, float]:
    """``(dE_per_atom, dF_max)``: the largest change of the energy per atom (eV/atom) and of a
    rotated-back force component (eV/Å) of ``model`` under ``n_rotations`` random rotations,
    the inversion and a reflection of ``atoms`` (default: ``probe_structure``, a rattled (0.15 Å),
    strained 32-atom fcc cell of the model's own elements), float64. About 0.3 s for the shipped
    model. Compare with ``ENERGY_BOUND`` and ``FORCE_BOUND``."""
    err = symmetry_error(model, atoms, n_rotations, seed)
    return err.energy_per_atom, err.forces



def graph_symmetry_error(
    model: object,
    species: torch.Tensor,
    centre: torch.Tensor,
    neighbour: torch.Tensor,
    rij: torch.Tensor,
    n_rotations: int = 3,
    seed: int = 0,
) -> SymmetryError:
    """``symmetry_error`` on a graph instead of ``Atoms``: the edge vectors ``rij`` (Å) are
    transformed, edges and species kept (what a rigid motion does to a radius graph). Used for
    training frames, which are stored as graphs. ``model`` (a ``Facet``) is evaluated in float64
    (a copy when it is in another dtype); nothing of it is changed."""
    from facet.contract import energy_forces_stress
    from facet.model import with_dtype

    m = with_dtype(model, torch.float64)  # type: ignore[arg-type]
    dev = next(m.parameters()).device
    species, centre, neighbour = (t.to(dev) for t in (species, centre, neighbour))
    x = rij.detach().to(device=dev, dtype=torch.float64)
    n = int(species.shape[0])

    def energy_forces(r: torch.Tensor) -> tuple[float, np.ndarray]:
        _, total, forces, _ = energy_forces_stress(m, species, centre, neighbour,
                                                   r.clone().requires_grad_(True))
        return float(total.detach()), forces.detach().cpu().numpy()

    e0, f0 = energy_forces(x)
    per: dict[str, tuple[float, float]] = {}
    for name, q in orthogonal_transforms(n_rotations, seed).items():
        qt = torch.as_tensor(q, dtype=torch.float64, device=dev)
        e, f = energy_forces(x @ qt.T)
        per[name] = (abs(e - e0) / max(n, 1), float(np.abs(f - f0 @ q.T).max()))
    worst = max(per, key=lambda k: per[k][1])
    return SymmetryError(max(v[0] for v in per.values()), max(v[1] for v in per.values()),
                         worst, per)
