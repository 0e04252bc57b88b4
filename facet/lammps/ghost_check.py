"""Is the ghost shell a rank sees deep enough for an L-layer model? A check from geometry alone.

An L-layer model is exact on a rank when every atom within L-1 hops (edges of length < r_max) of a
local atom has its complete neighbour list, i.e. the ball of radius r_max around it lies inside
the region where the rank has atoms. LAMMPS' ML-IAP coupling tells the Python model neither the
communication cutoff nor the subdomain, so this module infers both from what it does see:
relative positions (reconstructed from r_ij along the edge graph) and hop counts.

LAMMPS' ghost region of an orthogonal subdomain is the subdomain grown by the ghost cutoff c
along +-x, +-y, +-z. Per axis direction u, the present atoms reach ``e_u`` beyond the local
ones: about c where the material goes on (the shell cuts it; give or take the gaps between
the outermost atomic planes and the region's faces), less where the material itself ends (a
free surface, vacuum). The largest ``e_u`` of the rank is therefore an estimate of c, and a
direction counts as cut by the shell when it reaches that far within ``tolerance`` (or reaches
the receptive field ``L * r_max``, where no shortfall is possible); in those, every atom a with
hop <= L-1 must satisfy ``x_a.u + r_max <= max_b x_b.u`` over present atoms b (the outermost
atoms lie inside the true region, so the test is sufficient). Directions in which the material
ends short of the shell carry no shell to be short of and are skipped: a slab decomposed across
its vacuum is not a missing ghost shell. A material end that reaches within ``tolerance`` of
the shell but not the receptive field is still checked: with a shell of only
``L * r_max + skin`` that can stop a correct run (thick slabs); a deeper shell (``L * r_max +
skin + tolerance``) or the switch below resolves it.

What geometry cannot tell apart: a system that ends in every direction before the shell does
(a small cluster split over ranks, with vacuum all round) looks like a shell exactly as deep as
the cluster. If the check stops such a run although ``comm_modify cutoff`` is at least
``L * r_max + skin``, switch it off with the environment variable ``FACET_GHOST_CHECK=0``
(``mpirun -genv FACET_GHOST_CHECK 0`` / ``-x``, or in the deck:
``python source here "import os; os.environ['FACET_GHOST_CHECK'] = '0'"``).

For triclinic boxes the faces are tilted; the axis tests still catch a shell that is short by
more than the tilt allows (tested on sheared cells).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components


@dataclass
class ShellReport:
    ok: bool
    deficit: float  # largest shortfall (Å) of the ghost shell, 0 when ok
    n_checked: int  # atoms within L-1 hops whose neighbourhoods were checked


AXES = np.concatenate([np.eye(3), -np.eye(3)])

# how far short of the rank's deepest reach a direction may end and still count as cut by the
# ghost shell (Å): the reach beyond the local atoms is the shell depth give or take the gaps
# between the outermost atomic planes and the region's faces (up to two plane spacings, about
# 2 x 2 Å in dense solids), so a shorter reach than this margin allows is a material end
SHELL_TOLERANCE = 4.0


def enabled() -> bool:
    """False when the user switched the check off (environment ``FACET_GHOST_CHECK=0``)."""
    return os.environ.get("FACET_GHOST_CHECK", "1").strip().lower() not in ("0", "no", "off",
                                                                             "false")


def hop_distances(nlocal: int, ntotal: int, pair_i: np.ndarray, pair_j: np.ndarray, max_hops: int):
    """Hops from the local atoms along edges (``max_hops + 1`` for farther/unreached atoms)."""
    hops = np.full(ntotal, max_hops + 1, dtype=np.int64)
    hops[:nlocal] = 0
    frontier = np.zeros(ntotal, dtype=bool)
    frontier[:nlocal] = True
    for h in range(1, max_hops + 1):
        reach = np.zeros(ntotal, dtype=bool)
        reach[pair_j[frontier[pair_i]]] = True
        new = reach & (hops > h)
        hops[new] = h
        frontier = new
    return hops


def _bfs_levels(graph, root: int, ntotal: int) -> np.ndarray:
    """Hop distance of every node from ``root`` (-1 where unreached), level-synchronous."""
    level = np.full(ntotal, -1, dtype=np.int64)
    level[root] = 0
    frontier = np.array([root])
    d = 0
    while frontier.size:
        d += 1
        nb = graph[frontier].indices
        nb = np.unique(nb[level[nb] < 0])
        level[nb] = d
        frontier = nb
    return level


def reconstruct_positions(ntotal: int, pair_i: np.ndarray, pair_j: np.ndarray, rij: np.ndarray):
    """Positions up to one translation per connected component, and the component labels.

    One breadth-first pass for all components: a virtual root (node ``ntotal``) is joined to
    the first node of every component by a zero-length edge, so isolated atoms (e.g. of a type
    mapped to NULL, or ghosts beyond every cutoff) and many small components cost O(N) in all.
    """
    graph = coo_matrix(
        (np.arange(1, len(pair_i) + 1), (pair_i, pair_j)), shape=(ntotal, ntotal)
    ).tocsr()
    _, labels = connected_components(graph, directed=False)
    roots = np.unique(labels, return_index=True)[1]
    edges = len(pair_i) + np.arange(1, len(roots) + 1)  # edge id + 1, as stored in the CSR data
    graph = coo_matrix(
        (np.concatenate([np.arange(1, len(pair_i) + 1), edges]),
         (np.concatenate([pair_i, np.full(len(roots), ntotal)]), np.concatenate([pair_j, roots]))),
        shape=(ntotal + 1, ntotal + 1),
    ).tocsr()
    steps = np.concatenate([np.asarray(rij, dtype=np.float64).reshape(-1, 3),
                            np.zeros((len(roots), 3))])
    order, pred = breadth_first_order(graph, ntotal, directed=True, return_predecessors=True)
    nodes = order[1:]
    pos = np.zeros((ntotal + 1, 3))
    if nodes.size:
        # id of the edge pred -> node
        edge = np.asarray(graph[pred[nodes], nodes]).ravel() - 1
        depth = _bfs_levels(graph, ntotal, ntotal + 1)[nodes]
        for d in range(1, int(depth.max()) + 1):
            sel = depth == d
            pos[nodes[sel]] = pos[pred[nodes[sel]]] + steps[edge[sel]]
    return pos[:ntotal], labels


def check_ghost_shell(
    nlocal: int,
    ntotal: int,
    pair_i: np.ndarray,
    pair_j: np.ndarray,
    rij: np.ndarray,
    r_max: float,
    num_layers: int,
    tolerance: float = SHELL_TOLERANCE,
) -> ShellReport:
    """Check that all atoms within ``num_layers - 1`` hops of local atoms see complete
    neighbourhoods (radius ``r_max``, Å) in every direction the ghost shell cuts (see the
    module docstring; ``tolerance`` in Å)."""
    if num_layers <= 1 or ntotal == nlocal or len(pair_i) == 0:
        return ShellReport(True, 0.0, 0)
    pair_i = np.asarray(pair_i, dtype=np.int64)
    pair_j = np.asarray(pair_j, dtype=np.int64)
    hops = hop_distances(nlocal, ntotal, pair_i, pair_j, num_layers - 1)
    pos, labels = reconstruct_positions(ntotal, pair_i, pair_j, rij)
    proj = pos @ AXES.T  # [ntotal, 6]
    components = []
    for comp in np.unique(labels[:nlocal]):
        members = labels == comp
        inner = members & (hops <= num_layers - 1)
        if not inner.any():
            continue
        reach = proj[members].max(axis=0)  # support function of the present atoms
        beyond = reach - proj[:nlocal][members[:nlocal]].max(axis=0)  # e_u
        components.append((inner, reach, beyond))
    if not components:
        return ShellReport(True, 0.0, 0)
    shell = max(float(beyond.max()) for _, _, beyond in components)  # apparent depth c
    # cut by the shell: reaching the shell's depth within the tolerance (or the receptive
    # field, beyond which nothing can be missing); shorter is where the material ends
    threshold = max(r_max, min(shell - tolerance, num_layers * r_max))
    deficit = 0.0
    n_checked = 0
    for inner, reach, beyond in components:
        cut = beyond >= threshold
        need = proj[inner].max(axis=0) + r_max
        short = np.where(cut, need - reach, 0.0)
        deficit = max(deficit, float(short.max()))
        n_checked += int(inner.sum())
    return ShellReport(deficit <= 1e-9, max(deficit, 0.0), n_checked)
