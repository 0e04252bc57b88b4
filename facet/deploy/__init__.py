"""Freezing Facet models to TorchScript and deploying them to LAMMPS."""
