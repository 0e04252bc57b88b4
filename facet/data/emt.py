"""A deterministic, offline reference data set: fcc metals and alloys labelled with ASE's EMT.

Elements: Cu, Au, Ag, Ni, Pd, Pt, Al (the metals of ASE's EMT). Frames (at most 64 atoms):
rattled and strained bulk supercells (pure and random alloys), vacancies, (111)/(100) slabs
(vacuum along z, no stress label), and snapshots of short Langevin MD at several temperatures.
Labels: energy (eV), forces (eV/Å) and, for bulk frames, stress (eV/Å^3, ASE sign and Voigt
order), attached as a ``SinglePointCalculator`` so that ``ase.io.write`` stores them in extxyz.

Every frame depends only on the seed and the size, so the file is regenerated bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

ELEMENTS = ["Cu", "Au", "Ag", "Ni", "Pd", "Pt", "Al"]

# fcc lattice constants (Å) at EMT's energy minimum (ASE EMT parameters; rounded to 0.005 Å).
LATTICE = {"Cu": 3.59, "Au": 4.055, "Ag": 4.065, "Ni": 3.485, "Pd": 3.88, "Pt": 3.92, "Al": 3.995}


@dataclass(frozen=True)
class Sizes:
    """How many frames of each kind to generate."""

    bulk_per_element: int
    alloys: int
    vacancies_per_element: int
    alloy_vacancies: int
    slabs: int
    md_temperatures: tuple[float, ...]
    md_systems_pure: int  # per element
    md_systems_alloy: int
    md_systems_slab: int
    md_snapshots: int
    md_equilibrate: int
    md_interval: int


SIZES = {
    "tiny": Sizes(1, 2, 0, 1, 1, (600.0,), 0, 1, 0, 2, 5, 5),
    "small": Sizes(3, 10, 1, 4, 6, (300.0, 1200.0), 0, 3, 1, 3, 10, 10),
    "default": Sizes(24, 160, 6, 30, 100, (300.0, 800.0, 1500.0), 1, 8, 4, 10, 30, 10),
}


def label(atoms: Atoms, stress: bool = True) -> Atoms:
    """Return a copy of ``atoms`` with EMT energy, forces (and stress) frozen in a
    ``SinglePointCalculator``."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress:
        results["stress"] = atoms.get_stress(voigt=True)
    out = atoms.copy()
    out.info.pop("adsorbate_info", None)  # a dict that extxyz cannot store
    out.calc = SinglePointCalculator(out, **results)
    return out


def random_strain(atoms: Atoms, rng: np.random.Generator, iso: float, shear: float) -> None:
    """Scale the cell isotropically by ``1 + U(-iso, iso)`` and apply a random symmetric strain of
    standard deviation ``shear``, moving the atoms with it."""
    eps = rng.normal(0.0, shear, (3, 3))
    eps = 0.5 * (eps + eps.T)
    deformation = (1.0 + rng.uniform(-iso, iso)) * (np.eye(3) + eps)
    atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)


def bulk_cell(symbol: str, a: float, kind: int) -> Atoms:
    """A bulk fcc supercell: 0 = 2x2x2 conventional (32 atoms), 1 = 3x3x3 primitive (27 atoms),
    2 = 2x2x1 conventional (16 atoms)."""
    if kind == 0:
        return bulk(symbol, "fcc", a=a, cubic=True).repeat((2, 2, 2))
    if kind == 1:
        return bulk(symbol, "fcc", a=a).repeat((3, 3, 3))
    return bulk(symbol, "fcc", a=a, cubic=True).repeat((2, 2, 1))


def random_alloy(atoms: Atoms, rng: np.random.Generator, symbols: list[str]) -> Atoms:
    """Decorate the sites of ``atoms`` with ``symbols`` at a random composition and rescale the
    cell to Vegard's law."""
    weights = rng.dirichlet(np.ones(len(symbols)))
    choice = rng.choice(len(symbols), size=len(atoms), p=weights)
    choice[: len(symbols)] = np.arange(len(symbols))  # every chosen element is present
    rng.shuffle(choice)
    old = np.mean([LATTICE[s] for s in atoms.get_chemical_symbols()])
    atoms.set_chemical_symbols([symbols[k] for k in choice])
    new = np.mean([LATTICE[s] for s in atoms.get_chemical_symbols()])
    atoms.set_cell(atoms.cell.array * (new / old), scale_atoms=True)
    return atoms


def pick_elements(rng: np.random.Generator, low: int = 2, high: int = 4) -> list[str]:
    n = int(rng.integers(low, high + 1))
    return [ELEMENTS[k] for k in rng.choice(len(ELEMENTS), size=n, replace=False)]


def make_slab(rng: np.random.Generator, symbols: list[str]) -> Atoms:
    """A (111) or (100) slab, periodic in-plane with 6 Å vacuum on each side (cell periodic in all
    three directions; the vacuum keeps the images apart)."""
    a = LATTICE[symbols[0]]  # random_alloy rescales to Vegard's law
    if rng.random() < 0.5:
        size = ((2, 2, 4), (3, 2, 4), (4, 2, 4))[int(rng.integers(3))]
        slab = fcc111(symbols[0], size=size, a=a, vacuum=6.0, orthogonal=True)
    else:
        size = ((2, 2, 5), (3, 3, 4), (3, 2, 5))[int(rng.integers(3))]
        slab = fcc100(symbols[0], size=size, a=a, vacuum=6.0)
    slab.pbc = True
    if len(symbols) > 1:
        random_alloy(slab, rng, symbols)
    return slab


def rattle(atoms: Atoms, rng: np.random.Generator, sigma: float) -> None:
    atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)


def md_snapshots(
    atoms: Atoms,
    rng: np.random.Generator,
    temperature: float,
    snapshots: int,
    equilibrate: int,
    interval: int,
    stress: bool,
) -> Iterator[Atoms]:
    """Langevin MD with EMT (2 fs, friction 0.02/fs); yield labelled snapshots."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    with warnings.catch_warnings():  # newer ASE prefers thermalize_momenta (same sampling)
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms,
        2.0 * units.fs,
        temperature_K=temperature,
        friction=0.02 / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(equilibrate)
    for _ in range(snapshots):
        dyn.run(interval)
        frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        yield label(frame, stress=stress)


def tag(atoms: Atoms, kind: str) -> Atoms:
    atoms.info["config_type"] = kind
    return atoms


def generate(seed: int = 0, size: str = "default") -> list[Atoms]:
    """All frames of the data set, in a fixed order."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    s = SIZES[size]
    rng = np.random.default_rng(seed)
    frames: list[Atoms] = []

    # 1. rattled + strained pure bulk
    for el in ELEMENTS:
        for k in range(s.bulk_per_element):
            atoms = bulk_cell(el, LATTICE[el], k % 3)
            random_strain(atoms, rng, iso=0.04, shear=0.015)
            rattle(atoms, rng, rng.uniform(0.01, 0.1))
            frames.append(tag(label(atoms), "bulk"))
    # 2. random alloys
    for k in range(s.alloys):
        symbols = pick_elements(rng)
        atoms = random_alloy(bulk_cell(symbols[0], LATTICE[symbols[0]], k % 3), rng, symbols)
        random_strain(atoms, rng, iso=0.03, shear=0.015)
        rattle(atoms, rng, rng.uniform(0.01, 0.1))
        frames.append(tag(label(atoms), "alloy"))
    # 3. vacancies (one or two removed sites), pure and alloyed
    vac_cells = [[el] for el in ELEMENTS for _ in range(s.vacancies_per_element)]
    vac_cells += [pick_elements(rng) for _ in range(s.alloy_vacancies)]
    for k, symbols in enumerate(vac_cells):
        atoms = bulk_cell(symbols[0], LATTICE[symbols[0]], k % 2)
        if len(symbols) > 1:
            random_alloy(atoms, rng, symbols)
        nvac = 1 + int(rng.integers(2))
        del atoms[[int(i) for i in rng.choice(len(atoms), size=nvac, replace=False)]]
        random_strain(atoms, rng, iso=0.02, shear=0.01)
        rattle(atoms, rng, rng.uniform(0.01, 0.08))
        frames.append(tag(label(atoms), "vacancy"))
    # 4. surfaces (no stress label: the vacuum makes the cell stress meaningless)
    for k in range(s.slabs):
        symbols = [ELEMENTS[k % len(ELEMENTS)]] if k % 2 == 0 else pick_elements(rng, 2, 3)
        slab = make_slab(rng, symbols)
        rattle(slab, rng, rng.uniform(0.01, 0.08))
        frames.append(tag(label(slab, stress=False), "surface"))
    # 5. MD snapshots at several temperatures
    for temperature in s.md_temperatures:
        systems: list[tuple[Atoms, bool, str]] = []
        for el in ELEMENTS:
            for k in range(s.md_systems_pure):
                atoms = bulk_cell(el, LATTICE[el], k % 2)
                random_strain(atoms, rng, iso=0.02, shear=0.0)
                systems.append((atoms, True, "md_bulk"))
        for k in range(s.md_systems_alloy):
            symbols = pick_elements(rng)
            atoms = random_alloy(bulk_cell(symbols[0], LATTICE[symbols[0]], k % 2), rng, symbols)
            if k % 4 == 3:
                del atoms[int(rng.integers(len(atoms)))]
            random_strain(atoms, rng, iso=0.02, shear=0.0)
            systems.append((atoms, True, "md_alloy"))
        for k in range(s.md_systems_slab):
            symbols = [ELEMENTS[int(rng.integers(len(ELEMENTS)))]]
            if k % 2:
                symbols = pick_elements(rng, 2, 3)
            systems.append((make_slab(rng, symbols), False, "md_surface"))
        for atoms, has_stress, kind in systems:
            for frame in md_snapshots(
                atoms, rng, temperature, s.md_snapshots, s.md_equilibrate, s.md_interval,
                has_stress,
            ):
                frame.info["temperature_K"] = temperature
                frames.append(tag(frame, kind))
    for frame in frames:
        if len(frame) > 64:
            raise AssertionError(f"frame with {len(frame)} atoms > 64")
    return frames


def heldout_md(
    seed: int = 1234,
    symbols: tuple[str, ...] = ("Cu", "Pd", "Au"),
    temperature: float = 700.0,
    steps: int = 400,
    interval: int = 4,
) -> list[Atoms]:
    """A held-out trajectory (not in any training set): Langevin MD of a 32-atom random
    ``symbols`` alloy with EMT, a labelled frame every ``interval`` steps of 2 fs."""
    rng = np.random.default_rng(seed)
    atoms = random_alloy(bulk_cell(symbols[0], LATTICE[symbols[0]], 0), rng, list(symbols))
    frames = list(
        md_snapshots(atoms, rng, temperature, steps // interval, 50, interval, stress=True)
    )
    for f in frames:
        tag(f, "heldout_md")
    return frames
