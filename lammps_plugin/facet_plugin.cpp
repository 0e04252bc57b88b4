/* Entry point of the LAMMPS plugin: `plugin load facetplugin.so` registers pair_style facet. */

#include "lammpsplugin.h"
#include "version.h"

#include "pair_facet.h"

using namespace LAMMPS_NS;

static Pair *facet_creator(LAMMPS *lmp)
{
  return new PairFacet(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "facet";
  plugin.info = "Facet ML potential (libtorch, per-layer halo exchange) v" FACET_PLUGIN_VERSION;
  plugin.author = "Facet for LAMMPS";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &facet_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
