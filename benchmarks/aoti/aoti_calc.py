"""Prototype ASE calculator running an AOTI package of the slot formulation (no torch.jit)."""
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from slots import neighbour_slots

from facet.contract import upper_symmetric, virial_from_pair_gradients
from facet.graph import build_graph


class AOTICalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, package, elements, r_max, dtype="float64", min_distance=0.1, **kw):
        super().__init__(**kw)
        if isinstance(package, str):
            package = torch._inductor.aoti_load_package(package)
        self.fn = package
        self.elements, self.r_max, self.min_distance = list(elements), float(r_max), min_distance
        self.dtype = getattr(torch, dtype)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        g = build_graph(self.atoms, self.elements, self.r_max, self.min_distance)
        species = torch.as_tensor(g.species)
        centre = torch.as_tensor(g.centre)
        neighbour = torch.as_tensor(g.neighbour)
        rij = torch.as_tensor(g.rij, dtype=self.dtype)
        n = g.num_atoms
        e, dE = self.fn(species, neighbour, rij, neighbour_slots(centre, n, len(centre)))
        dE = dE.to(torch.float64)
        forces = torch.zeros(n, 3, dtype=torch.float64)
        forces.index_add_(0, centre, dE).index_add_(0, neighbour, -dE)
        energies = e.to(torch.float64).numpy()
        self.results.update(energies=energies, energy=float(energies.sum()),
                            free_energy=float(energies.sum()), forces=forces.numpy())
        if self.atoms.pbc.all():
            w = virial_from_pair_gradients(rij.to(torch.float64), dE)
            stress = (upper_symmetric(w) / self.atoms.get_volume()).numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
