"""Everything that runs Facet inside LAMMPS.

- ``mliap``: ``FacetMLIAP``, the object ``pair_style mliap unified <file> <ghostneigh>`` loads
  (``FacetMLIAP.from_checkpoint`` builds it from a checkpoint path);
- ``exchange``: LAMMPS' arrays as tensors and the KOKKOS per-layer halo exchange;
- ``ghost_check``: is a rank's ghost shell deep enough for the model (plain path)?
- ``ranks``: errors that stop every MPI rank, never a hang;
- ``deck``: the input-deck lines that run a deployed model;
- ``driver``: ``FacetLammps``, LAMMPS driven from Python (serial or mpi4py);
- ``check``: ``facet-deploy --check``, a deployed file against the ASE calculator.

Importing this package loads nothing heavy: each module is imported where it is needed, so a
LAMMPS rank that unpickles ``FacetMLIAP`` imports torch and numpy, not ASE.
"""
