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
from pathlib import Path

import ase.io
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


# ---------------------------------------------------------------------------------------------
# Held-out test sets: structures the trainer never sees, from their own seed and generators.

#: Seed of the held-out sets (the training data use ``generate(seed=0)``).
HELDOUT_SEED = 2026
#: Names of the held-out sets, in the order ``heldout_sets`` returns them.
HELDOUT_SETS = ("md_hot", "vacancy_strain", "surface_adatom")


def vegard_lattice(sites: list[str]) -> float:
    """Mean of the fcc lattice constants (Å) over ``sites`` (one symbol per atom): Vegard's
    law."""
    return float(np.mean([LATTICE[s] for s in sites]))


def random_composition(rng: np.random.Generator, symbols: list[str], n: int) -> list[str]:
    """``n`` site occupations drawn from ``symbols`` with random (Dirichlet) weights, every
    element present, in random order."""
    weights = rng.dirichlet(np.ones(len(symbols)))
    choice = rng.choice(len(symbols), size=n, p=weights)
    choice[: len(symbols)] = np.arange(len(symbols))
    rng.shuffle(choice)
    return [symbols[k] for k in choice]


def heldout_bulk_cell(kind: int, rng: np.random.Generator, symbols: list[str]) -> Atoms:
    """A bulk cell of a shape that the training data do not use (0 = 3x2x2 conventional,
    48 atoms; 1 = 4x3x3 primitive, 36 atoms; 2 = 2x2x2 conventional, 32 atoms), with a random
    composition of ``symbols`` at that composition's Vegard lattice constant."""
    sites = random_composition(rng, symbols, (48, 36, 32)[kind])
    a = vegard_lattice(sites)
    if kind == 0:
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((3, 2, 2))
    elif kind == 1:
        atoms = bulk("Cu", "fcc", a=a).repeat((4, 3, 3))
    else:
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    atoms.set_chemical_symbols(sites)
    return atoms


def some_elements(rng: np.random.Generator, k: int) -> list[str]:
    """One random element for even ``k``, 2 to 4 distinct ones for odd ``k``."""
    if k % 2 == 0:
        return [ELEMENTS[int(rng.integers(len(ELEMENTS)))]]
    return pick_elements(rng)


def heldout_md_hot(
    rng: np.random.Generator, temperatures: tuple[float, ...] = (1000.0, 1400.0),
    systems: int = 8, snapshots: int = 6,
) -> list[Atoms]:
    """Langevin MD snapshots at high temperature: per temperature, ``systems`` cells (pure
    metals and 2- to 4-element alloys alternating; every fourth with a vacancy) of the held-out
    shapes, ``snapshots`` frames each, 40 fs apart after 100 fs of equilibration."""
    frames = []
    for temperature in temperatures:
        for k in range(systems):
            atoms = heldout_bulk_cell(k % 3, rng, some_elements(rng, k))
            if k % 4 == 3:
                del atoms[int(rng.integers(len(atoms)))]
            random_strain(atoms, rng, iso=0.01, shear=0.0)
            for frame in md_snapshots(atoms, rng, temperature, snapshots, 50, 20, stress=True):
                frame.info["temperature_K"] = temperature
                frames.append(tag(frame, "md_hot"))
    return frames


def heldout_vacancy_strain(rng: np.random.Generator, frames_per_kind: int = 24) -> list[Atoms]:
    """Vacancies and strained cells: (a) 1 to 3 vacancies in pure and alloyed cells, strained
    by up to +-3 % (shear sigma 1 %) and rattled 0.02-0.1 Å; (b) cells without vacancies strained
    by up to +-4 % with a shear of sigma 2 % (the training's bulk frames: +-4 % and 1.5 %),
    rattled 0.02-0.1 Å. Half of each pure, half 2- to 4-element alloys."""
    frames = []
    for k in range(frames_per_kind):
        atoms = heldout_bulk_cell(k % 3, rng, some_elements(rng, k))
        nvac = 1 + int(rng.integers(3))
        del atoms[[int(i) for i in rng.choice(len(atoms), size=nvac, replace=False)]]
        random_strain(atoms, rng, iso=0.03, shear=0.01)
        rattle(atoms, rng, rng.uniform(0.02, 0.1))
        frames.append(tag(label(atoms), "vacancy"))
    for k in range(frames_per_kind):
        atoms = heldout_bulk_cell(k % 3, rng, some_elements(rng, k))
        random_strain(atoms, rng, iso=0.04, shear=0.02)
        rattle(atoms, rng, rng.uniform(0.02, 0.1))
        frames.append(tag(label(atoms), "strained"))
    return frames


def adatom_slab(rng: np.random.Generator, symbols: list[str], facet: str) -> Atoms:
    """A (111), (100) or (110) slab of a random composition of ``symbols`` at its Vegard
    lattice constant, 6 Å of vacuum on each side, with one or two adatoms (random elements of
    ``symbols``) on hollow sites of the top layer, at the height of the next lattice layer."""
    from ase.build import add_adsorbate, fcc110

    sites = random_composition(rng, symbols, {"111": 24, "100": 36, "110": 30}[facet])
    a = vegard_lattice(sites)
    if facet == "111":
        slab = fcc111("Cu", size=(3, 2, 4), a=a, vacuum=6.0, orthogonal=True)
        kinds, height = ("fcc", "hcp"), a / np.sqrt(3.0)
        cells = [(i, 0) for i in range(3)]
    elif facet == "100":
        slab = fcc100("Cu", size=(3, 3, 4), a=a, vacuum=6.0)
        kinds, height = ("hollow",), a / 2.0
        cells = [(i, j) for i in range(3) for j in range(3)]
    else:
        slab = fcc110("Cu", size=(2, 3, 5), a=a, vacuum=6.0)
        kinds, height = ("hollow",), a * np.sqrt(2.0) / 4.0
        cells = [(i, j) for i in range(2) for j in range(3)]
    slab.set_chemical_symbols(sites)
    n_ad = 1 + int(rng.integers(2))
    for k in rng.choice(len(cells), size=n_ad, replace=False):
        kind = kinds[int(rng.integers(len(kinds)))]
        el = symbols[int(rng.integers(len(symbols)))]
        add_adsorbate(slab, el, height, position=kind, offset=cells[int(k)])
    slab.info.pop("adsorbate_info", None)
    slab.pbc = True
    return slab


def heldout_surface_adatom(
    rng: np.random.Generator, slabs: int = 12, snapshots: int = 4, temperature: float = 600.0,
) -> list[Atoms]:
    """Surfaces with adatoms: ``slabs`` slabs cycling (111), (100), (110) (the last is not in
    the training data), pure and 2- to 3-element alloys alternately by triple, one or two
    adatoms each; ``snapshots`` Langevin MD frames each at ``temperature`` (40 fs apart after
    60 fs), no stress label."""
    frames = []
    for k in range(slabs):
        facet = ("111", "100", "110")[k % 3]
        symbols = [ELEMENTS[int(rng.integers(len(ELEMENTS)))]] if (k // 3) % 2 == 0 \
            else pick_elements(rng, 2, 3)
        slab = adatom_slab(rng, symbols, facet)
        for frame in md_snapshots(slab, rng, temperature, snapshots, 30, 20, stress=False):
            frame.info["facet"] = facet
            frames.append(tag(frame, "surface_adatom"))
    return frames


def heldout_sets(seed: int = HELDOUT_SEED) -> dict[str, list[Atoms]]:
    """The held-out test sets (``HELDOUT_SETS``), from ``seed`` and generators of their own
    (cell shapes, temperatures, strains, facets and adatoms that differ from ``generate``)."""
    rng = np.random.default_rng(seed)
    return {
        "md_hot": heldout_md_hot(rng),
        "vacancy_strain": heldout_vacancy_strain(rng),
        "surface_adatom": heldout_surface_adatom(rng),
    }


def read_heldout_sets(folder: str, seed: int = HELDOUT_SEED) -> dict[str, list[Atoms]]:
    """The held-out sets from ``folder/<name>.xyz`` (as written by
    ``scripts/make_emt_dataset.py --heldout-sets``), generated anew where a file is missing."""
    out: dict[str, list[Atoms]] = {}
    missing = [n for n in HELDOUT_SETS if not (Path(folder) / f"{n}.xyz").exists()]
    made = heldout_sets(seed) if missing else {}
    for name in HELDOUT_SETS:
        path = Path(folder) / f"{name}.xyz"
        out[name] = made[name] if name in missing else ase.io.read(path, ":")
    return out


def heldout_table(calc, heldout_dir: str, trajectory: str) -> dict[str, dict[str, float]]:
    """``reference_errors`` of ``calc`` on every held-out set (``read_heldout_sets``), on the
    700 K trajectory ``trajectory`` ("md_700K"; ``heldout_md`` if the file is missing) and on
    all of them pooled ("all": every frame counts once)."""
    sets = read_heldout_sets(heldout_dir)
    held = Path(trajectory)
    sets["md_700K"] = ase.io.read(held, ":") if held.exists() else heldout_md()
    out = {name: reference_errors(calc, frames) for name, frames in sets.items()}
    out["all"] = reference_errors(calc, [f for frames in sets.values() for f in frames])
    return out


def reference_errors(calc, frames: list[Atoms]) -> dict[str, float]:
    """Errors of ``calc`` (any ASE calculator) against the frames' EMT labels: MAE and RMSE of
    the energy per atom (meV/atom; also after removing the mean offset), of the force components
    (meV/Å) and of the stress components where the frames have one (meV/Å^3)."""
    de, df, ds, e_ref, fref = [], [], [], [], []
    for f in frames:
        atoms = f.copy()
        atoms.calc = calc
        n = len(atoms)
        de.append((atoms.get_potential_energy() - f.get_potential_energy()) / n)
        df.append((atoms.get_forces() - f.get_forces()).ravel())
        fref.append(f.get_forces().ravel())
        e_ref.append(f.get_potential_energy() / n)
        if "stress" in f.calc.results:
            ds.append(atoms.get_stress() - f.get_stress())
    de, df, fref = np.array(de), np.concatenate(df), np.concatenate(fref)
    out = {
        "frames": len(frames),
        "atoms": int(sum(len(f) for f in frames)),
        "e_mae_mev_atom": 1000 * float(np.abs(de).mean()),
        "e_rmse_mev_atom": 1000 * float(np.sqrt((de**2).mean())),
        "e_mean_offset_mev_atom": 1000 * float(de.mean()),
        "e_mae_after_mean_shift_mev_atom": 1000 * float(np.abs(de - de.mean()).mean()),
        "e_ref_std_mev_atom": 1000 * float(np.std(e_ref)),
        "f_mae_mev_a": 1000 * float(np.abs(df).mean()),
        "f_rmse_mev_a": 1000 * float(np.sqrt((df**2).mean())),
        "f_ref_mean_abs_mev_a": 1000 * float(np.abs(fref).mean()),
    }
    if ds:
        ds = np.concatenate(ds)
        out["s_mae_mev_a3"] = 1000 * float(np.abs(ds).mean())
    return out
