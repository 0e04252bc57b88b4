"""Batched energies, forces and stresses of several disjoint structures with one backward pass.

Per-structure energies are sums of per-atom energies over a node->structure index; one
``autograd.grad`` of the total energy with respect to every ``r_ij`` gives the pair gradients,
from which forces (``F_i += dE/dr_ij``, ``F_j -= dE/dr_ij``) and the per-structure virial
(``sum r_ij (x) dE/dr_ij`` over an edge->structure index) follow, exactly as in
``facet.contract`` for one structure. Stress = virial / V (eV/Å^3, ASE sign, Voigt
xx yy zz yz xz xy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from facet.contract import forces_from_pair_gradients, virial_from_pair_gradients
from facet.model import Facet
from facet.train.data import Batch

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass
class Prediction:
    energy: torch.Tensor  # [B] eV
    forces: torch.Tensor  # [N, 3] eV/Å
    stress: torch.Tensor  # [B, 6] eV/Å^3 (meaningless where the batch has no stress label)


def predict(model: Facet, batch: Batch, create_graph: bool) -> Prediction:
    """Energies, forces and stresses of every structure in ``batch``.

    ``create_graph=True`` keeps the graph so that a loss on forces/stress can be back-propagated
    to the parameters (training); use False for evaluation. The model and ``batch`` must be on
    the same device; every tensor made here is made there.
    """
    with torch.enable_grad():
        rij = batch.rij.detach().requires_grad_(True)
        e_atoms = model(batch.species, batch.centre, batch.neighbour, rij)
        energy = e_atoms.new_zeros(batch.num_structures).index_add(
            0, batch.node_batch, e_atoms
        )
        if rij.shape[0] == 0:
            g = torch.zeros_like(rij)
        else:
            (g,) = torch.autograd.grad(energy.sum(), rij, create_graph=create_graph)
    forces = forces_from_pair_gradients(g, batch.centre, batch.neighbour, batch.forces.shape[0])
    virial = virial_from_pair_gradients(rij, g, batch.edge_batch, batch.num_structures)
    # Voigt components from the upper triangle, as LAMMPS tallies them (see facet.contract)
    stress = virial / batch.volume.reshape(-1, 1, 1)
    voigt = torch.stack([stress[:, a, b] for a, b in VOIGT], dim=1)
    if not create_graph:
        energy, forces, voigt = energy.detach(), forces.detach(), voigt.detach()
    return Prediction(energy, forces, voigt)
