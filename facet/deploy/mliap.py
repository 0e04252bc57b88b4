"""Old module path of ``FacetMLIAP`` (files deployed before it moved to ``facet.lammps.mliap``
name this module); redeploy with ``facet-deploy`` to drop the dependency on it."""

from facet.lammps.mliap import FacetMLIAP

__all__ = ["FacetMLIAP"]
