"""The ghost-shell check, on explicit 'rank views' cut from periodic crystals like LAMMPS does."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list
from conftest import triclinic_alloy

from facet.lammps.ghost_check import check_ghost_shell, hop_distances


def rank_view(atoms, cutoff_ghost: float, r_max: float):
    """Local atoms = the cell; ghosts = periodic images within `cutoff_ghost` of the cell
    (fractional-coordinate slab test like LAMMPS' brick comm); full pair list within r_max."""
    cell = atoms.cell.array
    inv = np.linalg.inv(cell)
    # distance between opposite faces per lattice direction
    spacing = 1.0 / np.linalg.norm(inv, axis=0)
    nrep = np.ceil(cutoff_ghost / spacing).astype(int) + 1
    frac = atoms.get_scaled_positions(wrap=True)
    pos, owner = [atoms.positions], [np.arange(len(atoms))]
    lo = -cutoff_ghost / spacing
    hi = 1 + cutoff_ghost / spacing
    for a in range(-nrep[0], nrep[0] + 1):
        for b in range(-nrep[1], nrep[1] + 1):
            for c in range(-nrep[2], nrep[2] + 1):
                if a == b == c == 0:
                    continue
                f = frac + np.array([a, b, c])
                keep = np.all((f >= lo) & (f < hi), axis=1)
                pos.append(f[keep] @ cell)
                owner.append(np.nonzero(keep)[0])
    pos = np.concatenate(pos)
    from ase import Atoms

    cluster = Atoms("X" * len(pos), positions=pos)
    i, j, d = neighbor_list("ijD", cluster, r_max)
    return len(atoms), len(pos), i, j, d


@pytest.mark.parametrize("layers", [2, 3])
def test_deep_shell_passes_and_thin_shell_fails(layers):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    r_max = 3.0
    deep = rank_view(atoms, layers * r_max + 1.0, r_max)
    assert check_ghost_shell(*deep, r_max, layers).ok
    thin = rank_view(atoms, (layers - 1) * r_max + 0.5, r_max)
    report = check_ghost_shell(*thin, r_max, layers)
    assert not report.ok and report.deficit > 0.3


def test_triclinic_cell():
    atoms = triclinic_alloy()
    r_max = 3.0
    assert check_ghost_shell(*rank_view(atoms, 2 * r_max + 1.5, r_max), r_max, 2).ok
    assert not check_ghost_shell(*rank_view(atoms, 1.2 * r_max, r_max), r_max, 2).ok


def test_single_layer_needs_no_shell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    assert check_ghost_shell(*rank_view(atoms, 3.1, 3.0), 3.0, 1).ok


def test_free_surface_is_not_a_short_shell():
    """A slab with vacuum: the material ends, nothing is missing: no false alarm."""
    from ase.build import fcc111

    slab = fcc111("Cu", size=(3, 3, 4), vacuum=15.0)
    r_max = 3.0
    view = rank_view(slab, 2 * r_max + 1.0, r_max)
    assert check_ghost_shell(*view, r_max, 2).ok


def test_hop_distances():
    # chain 0-1-2-3 (local: 0)
    i = np.array([0, 1, 1, 2, 2, 3])
    j = np.array([1, 0, 2, 1, 3, 2])
    np.testing.assert_array_equal(hop_distances(1, 4, i, j, 2), [0, 1, 2, 3])


def test_isolated_atoms_and_many_components():
    """Atoms without pairs (a type mapped to NULL, far ghosts) and several components: positions
    are exact up to one translation per component, and the check runs."""
    from facet.lammps.ghost_check import reconstruct_positions

    rng = np.random.default_rng(2)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    r_max = 3.0
    nlocal, ntotal, i, j, d = rank_view(atoms, 2 * r_max + 1.0, r_max)
    # two far-apart copies of the view, and 5 isolated atoms in between, in shuffled order
    n2 = 2 * ntotal + 5
    perm = rng.permutation(n2)
    i2 = perm[np.concatenate([i, i + ntotal])]
    j2 = perm[np.concatenate([j, j + ntotal])]
    pos, labels = reconstruct_positions(n2, i2, j2, np.concatenate([d, d]))
    assert len(np.unique(labels)) == 2 + 5
    np.testing.assert_allclose(pos[i2] + np.concatenate([d, d]), pos[j2], atol=1e-9)
    assert check_ghost_shell(nlocal, ntotal + 5, i, j, d, r_max, 2).ok


def slab_rank_view(slab, cutoff_ghost: float, r_max: float, lower: bool = True):
    """The rank that owns the lower (or upper) half in z of a slab periodic in x and y only:
    ghosts = periodic images in x/y and the other half, within ``cutoff_ghost`` of the
    subdomain (an orthogonal box split at the middle of the cell in z), as LAMMPS' brick comm
    gives them."""
    from ase import Atoms

    cell = slab.cell.array
    mid = cell[2, 2] / 2
    lo = np.array([0.0, 0.0, 0.0 if lower else mid])
    hi = np.array([cell[0, 0], cell[1, 1], mid if lower else cell[2, 2]])
    images = [slab.positions + a * cell[0] + b * cell[1]
              for a in range(-3, 4) for b in range(-3, 4)]
    pos = np.concatenate(images)
    local = np.all((pos >= lo) & (pos < hi), axis=1)
    ghost = ~local & np.all((pos >= lo - cutoff_ghost) & (pos < hi + cutoff_ghost), axis=1)
    view = np.concatenate([pos[local], pos[ghost]])
    i, j, d = neighbor_list("ijD", Atoms("X" * len(view), positions=view), r_max)
    return int(local.sum()), len(view), i, j, d


@pytest.mark.parametrize("layers_thick", [6, 14])
@pytest.mark.parametrize("lower", [True, False])
def test_slab_split_across_vacuum(layers_thick, lower):
    """A slab decomposed in z: the material ends before the shell in z (vacuum is not a
    missing shell), while a shell too thin in x and y is still caught."""
    from ase.build import fcc100

    slab = fcc100("Cu", size=(2, 2, layers_thick), a=3.61, vacuum=12.0, orthogonal=True)
    r_max, layers = 5.0, 2
    for cutoff in (layers * r_max + 3.0, layers * r_max + 10.0):
        assert check_ghost_shell(*slab_rank_view(slab, cutoff, r_max, lower), r_max, layers).ok
    thin = check_ghost_shell(*slab_rank_view(slab, r_max + 2.0, r_max, lower), r_max, layers)
    assert not thin.ok and thin.deficit > 1.0
