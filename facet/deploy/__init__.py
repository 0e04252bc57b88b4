"""Old import path of the ML-IAP object, kept so that files deployed before the move to
``facet.lammps`` still unpickle (LAMMPS loads them by the class's module path). New code
imports ``facet.lammps.mliap``."""
