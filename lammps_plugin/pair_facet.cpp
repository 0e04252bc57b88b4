/* pair_style facet: see pair_facet.h.

   Conventions (shared with every Facet runtime, facet/contract.py): pairs (i, j) with centre i
   a local atom and neighbour j local or ghost, r_ij = x_j - x_i (Å), |r_ij| < r_max, full
   neighbour list (each pair once per centre). The model returns per-atom energies e_i of the
   local atoms; g_ij = dE/dr_ij with E the energy of all atoms on all ranks. Forces:
   F_i += g_ij, F_j -= g_ij (ghost forces are folded back by LAMMPS, newton on). Virial:
   W = -sum r_ij (x) g_ij, upper triangle for the off-diagonal components as LAMMPS tallies it;
   per-atom virial: half of each pair's term to each of its two atoms.
*/

#include "pair_facet.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <mpi.h>
#include <numeric>
#include <unordered_map>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

using namespace LAMMPS_NS;

namespace {

double now()
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

constexpr const char *kFormat = "facet-lammps-plugin";
constexpr int kFormatVersion = 1;
constexpr const char *kMetadataFile = "facet_plugin.json";
// the facet:: operators compiled into this plugin (facet/ops/*.cpp), as facet.ops.OPS_VERSION
constexpr int kFusedKernelsVersion = 4;
constexpr const char *kRedeploy = "facet-deploy model.pt --format plugin -o FILE";
constexpr const char *kFormatAOTI = "facet-aoti";
constexpr int kFormatVersionAOTI = 1;
constexpr const char *kRedeployAOTI = "facet-deploy model.pt --format aoti -o FILE.pt2";

/* glibc's default allocator serves large blocks with fresh mmap()s and gives freed memory back
   to the system: every model evaluation then page-faults its tensors in anew, and on a busy
   node the faults also leave the rank waiting (LAMMPS' "CPU use" 79-88 % instead of 98-100 %;
   wall time per step 1.08-1.34x at 108-500 atoms for AOTInductor packages, benchmarks/README).
   Keep freed memory for reuse instead, as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>
   would; the process's memory then stays at its peak. Settings the user made in the
   environment take precedence. Returns what was done, for the log. */
std::string tune_malloc()
{
#if defined(__GLIBC__)
  if (std::getenv("MALLOC_MMAP_MAX_") || std::getenv("MALLOC_TRIM_THRESHOLD_") ||
      std::getenv("GLIBC_TUNABLES"))
    return "glibc malloc left as set in the environment (MALLOC_*_ or GLIBC_TUNABLES)";
  if (mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1)
    return "glibc malloc keeps freed memory for reuse (M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB; "
           "`malloc_tuning no` leaves the defaults)";
  return "mallopt failed: glibc malloc defaults";
#else
  return "not glibc: allocator untouched";
#endif
}

torch::Tensor zeros_like_rows(int64_t rows, int64_t cols, const torch::Tensor &like)
{
  return torch::zeros({rows, cols}, like.options().requires_grad(false));
}

}    // namespace

/* ---------------------------------------------------------------------- */

PairFacet::PairFacet(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;    // the model file is not stored; repeat pair_style/pair_coeff after read_restart
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial is tallied per pair (also right under hybrid)
  // forces are sums of pair terms (+g on i, -g on j): the centroid form of each term is the
  // half-half split of -r_ij (x) g_ij that vatom holds
  centroidstressflag = CENTROID_SAME;
  unit_convert_flag = utils::NOCONVERT;
}

PairFacet::~PairFacet()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    delete[] type_map;
  }
}

void PairFacet::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  for (int i = 1; i < n; i++)
    for (int j = i; j < n; j++) setflag[i][j] = 0;
  memory->create(cutsq, n, n, "pair:cutsq");
  type_map = new int[n];
  for (int i = 0; i < n; i++) type_map[i] = -1;
}

/* ----------------------------------------------------------------------
   pair_style facet FILE [device cpu|cuda|cuda:K] [chunk_edges N] [single_pass_edges N]
                         [single_pass_memory MiB] [jit_optimize yes|no] [malloc_tuning yes|no]
                         [fold_images yes|no]
------------------------------------------------------------------------- */

void PairFacet::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style facet command: expected `pair_style facet FILE "
                      "[device cpu|cuda] [chunk_edges N] [single_pass_edges N] "
                      "[single_pass_memory MiB] [jit_optimize yes|no] [malloc_tuning yes|no] "
                      "[fold_images yes|no]`");
  model_path = arg[0];
  device_request.clear();
  chunk_edges_override = single_pass_edges_override = -1;
  single_pass_memory_mib = -1.0;
  jit_optimize_override = -1;
  fold_images = true;
  bool malloc_tuning = true;
  int iarg = 1;
  while (iarg < narg) {
    std::string key = arg[iarg];
    if (iarg + 1 >= narg) error->all(FLERR, "pair_style facet: keyword {} needs a value", key);
    if (key == "device") {
      device_request = arg[iarg + 1];
    } else if (key == "chunk_edges") {
      chunk_edges_override = utils::bnumeric(FLERR, arg[iarg + 1], false, lmp);
    } else if (key == "jit_optimize") {
      jit_optimize_override = utils::logical(FLERR, arg[iarg + 1], false, lmp);
    } else if (key == "malloc_tuning") {
      malloc_tuning = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    } else if (key == "fold_images") {
      fold_images = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    } else if (key == "single_pass_edges") {
      single_pass_edges_override = utils::bnumeric(FLERR, arg[iarg + 1], false, lmp);
      if (single_pass_edges_override < 0)
        error->all(FLERR, "pair_style facet: single_pass_edges must be >= 0");
    } else if (key == "single_pass_memory") {
      single_pass_memory_mib = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (single_pass_memory_mib < 0.0)
        error->all(FLERR, "pair_style facet: single_pass_memory must be >= 0 (MiB)");
    } else {
      error->all(FLERR,
                 "pair_style facet: unknown keyword {} (known: device, chunk_edges, "
                 "single_pass_edges, single_pass_memory, jit_optimize, malloc_tuning, "
                 "fold_images)",
                 key);
    }
    iarg += 2;
  }
  load_model();
  if (malloc_tuning) {
    const std::string done = tune_malloc();
    if (comm->me == 0) utils::logmesg(lmp, "Facet plugin: memory: {}\n", done);
  }
  size_single_pass(malloc_tuning);
  // widths of the per-layer exchanges: forward after layers 0..L-2 (outputs of width
  // feature_dims[1..L-1]), reverse of the gradients of the same features. Set here, before
  // comm->init() sizes LAMMPS' buffers from comm_forward/comm_reverse.
  int widest = 1;
  for (int k = 1; k < num_layers; k++) widest = std::max(widest, (int) feature_dims[k]);
  comm_forward = comm_reverse = row_doubles(widest);
}

/* ----------------------------------------------------------------------
   memory the system lets this process use without swapping (Linux: MemAvailable), MiB; 0 if
   unknown
------------------------------------------------------------------------- */

static double mem_available_mib()
{
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kib = 0.0;
  while (meminfo >> key) {
    if (key == "MemAvailable:") {
      meminfo >> kib;
      return kib / 1024.0;
    }
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0.0;
}

/* ----------------------------------------------------------------------
   the CPU single pass of a TorchScript file, up to the pairs that fit a memory budget:
   budget / the working memory per pair measured when the file was written. Automatic budget:
   half the memory the node has available, shared by its ranks, at most 2 GiB per rank; the
   file's single_pass_edges stays the least. `single_pass_memory MiB` sets the budget (and
   may lower the limit); `single_pass_edges N` overrides both. Only with the allocator
   setting: under glibc's defaults large single passes page-fault (benchmarks/README).
------------------------------------------------------------------------- */

void PairFacet::size_single_pass(bool malloc_tuned)
{
  std::string skip;
  if (!malloc_tuned)
    skip = "malloc_tuning no (large single passes page-fault under glibc's defaults)";
  else if (aoti)
    skip = "an AOTInductor package runs in chunks on the CPU";
  else if (!device.is_cpu())
    skip = "not on the CPU";
  else if (single_pass_edges_override >= 0)
    skip = "single_pass_edges is given";
  else if (chunk_edges <= 0)
    skip = "chunk_edges 0: always the single pass";
  else if (single_pass_bytes_per_pair <= 0)
    skip = "the file does not record its memory per pair (written by an older facet-deploy)";
  if (!skip.empty()) {
    if (single_pass_memory_mib >= 0.0 && comm->me == 0)
      error->warning(FLERR, "pair_style facet: single_pass_memory has no effect here: {}", skip);
    return;
  }
  double budget = single_pass_memory_mib;
  std::string why = "single_pass_memory";
  if (budget < 0.0) {
    // ranks on this node: equal processor names
    char name[MPI_MAX_PROCESSOR_NAME + 1] = {0};
    int len = 0;
    MPI_Get_processor_name(name, &len);
    std::vector<char> names((size_t) comm->nprocs * (MPI_MAX_PROCESSOR_NAME + 1));
    MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME + 1, MPI_CHAR, names.data(),
                  MPI_MAX_PROCESSOR_NAME + 1, MPI_CHAR, world);
    int on_node = 0;
    for (int r = 0; r < comm->nprocs; r++)
      on_node += std::strncmp(name, &names[(size_t) r * (MPI_MAX_PROCESSOR_NAME + 1)],
                              MPI_MAX_PROCESSOR_NAME) == 0;
    const double avail = mem_available_mib();
    budget = std::min(2048.0, 0.5 * avail / std::max(on_node, 1));
    why = fmt::format("half the node's available {:.0f} MiB over its {} rank(s), at most 2048",
                      avail, on_node);
  }
  const long by_memory = (long) (budget * 1048576.0 / (double) single_pass_bytes_per_pair);
  single_pass_edges =
      single_pass_memory_mib >= 0.0 ? by_memory : std::max(single_pass_edges, by_memory);
  if (comm->me == 0)
    utils::logmesg(lmp,
                   "Facet plugin: single pass up to {} pairs per rank (working memory {:.1f} kB "
                   "per pair, measured when the file was written; budget {:.1f} MiB: {})\n",
                   single_pass_edges, single_pass_bytes_per_pair / 1000.0, budget, why);
}

void PairFacet::load_model()
{
  {
    std::ifstream probe(model_path, std::ios::binary);
    if (!probe.good())
      error->all(FLERR,
                 "pair_style facet: cannot open model file {}: check the path (write the file "
                 "with `{}` or `{}`)",
                 model_path, kRedeploy, kRedeployAOTI);
  }
  // an AOTInductor package (a zip archive with extra/facet.json) or a TorchScript file
  std::string text;
  try {
    text = FacetPlugin::read_aoti_metadata(model_path);
  } catch (const std::exception &e) {
    error->all(FLERR,
               "pair_style facet: {} is not a readable Facet plugin file or package (corrupt or "
               "truncated?): {}; write it with `{}` or `{}`",
               model_path, e.what(), kRedeploy, kRedeployAOTI);
  }
  const bool is_package = !text.empty();
  aoti.reset();
  if (!is_package) text = load_torchscript();
  const char *redeploy = is_package ? kRedeployAOTI : kRedeploy;
  json meta;
  try {
    meta = json::parse(text);
  } catch (const std::exception &) {
    error->all(FLERR, "pair_style facet: the metadata of {} is not valid JSON; write it with `{}`",
               model_path, redeploy);
  }
  try {
    const std::string expected = is_package ? kFormatAOTI : kFormat;
    const int readable = is_package ? kFormatVersionAOTI : kFormatVersion;
    std::string format = meta.value("format", "");
    int version = meta.value("format_version", -1);
    if (format != expected)
      error->all(FLERR, "pair_style facet: {} has format '{}', not '{}'; write it with `{}`",
                 model_path, format, expected, redeploy);
    if (version != readable)
      error->all(FLERR,
                 "pair_style facet: {} has file format version {}, this plugin reads "
                 "version {}: {}",
                 model_path, version, readable,
                 version > readable
                     ? "rebuild the plugin from the facet release that wrote the file "
                       "(deploy/build_plugin.sh)"
                     : std::string("write the file again with `") + redeploy + "`");
    model_elements = meta.at("elements").get<std::vector<std::string>>();
    r_max = meta.at("r_max").get<double>();
    num_layers = meta.at("num_layers").get<int>();
    feature_dims = meta.at("feature_dims").get<std::vector<long>>();
    dtype_name = meta.at("dtype").get<std::string>();
    device_name = meta.value("device", "cpu");
    // chunking defaults of facet.chunks.default_chunking (a package stores none). The package's
    // layer programs recompute every layer in the backward pass whatever the chunking, so on
    // the CPU, chunks are free and their small tensors faster: always chunked there
    const bool cuda_file = device_name.rfind("cuda", 0) == 0;
    chunk_edges = meta.value("chunk_edges", cuda_file ? 1L << 18 : 4096L);
    single_pass_edges =
        meta.value("single_pass_edges", cuda_file ? 1L << 18 : is_package ? 0L : 16384L);
    chunking_by_device.clear();
    if (meta.contains("chunking_by_device"))
      for (auto &item : meta["chunking_by_device"].items())
        chunking_by_device[item.key()] = item.value().get<std::vector<long>>();
    single_pass_bytes_per_pair = meta.value("single_pass_bytes_per_pair", 0L);
    facet_version = meta.value("facet_version", "?");
    torch_version = meta.value("torch_version", "?");
    cpu_isa = meta.value("cpu_isa", "");
    fused_kernels = meta.value("fused_kernels", 0);
    if (fused_kernels > kFusedKernelsVersion)
      error->all(FLERR,
                 "pair_style facet: {} calls Facet's fused kernels of version {} and this plugin "
                 "has version {}: rebuild the plugin from the facet that wrote the file "
                 "(deploy/build_plugin.sh), or deploy the file with --no-fused-kernels",
                 model_path, fused_kernels, kFusedKernelsVersion);
    if (is_package) {
      auto programs = meta.value("programs", std::vector<std::string>{});
      std::vector<std::string> needed{"embed", "readout"};
      for (int k = 0; k < num_layers; k++) {
        needed.push_back("layer" + std::to_string(k));
        needed.push_back("layer" + std::to_string(k) + "_vjp");
      }
      for (const auto &name : needed)
        if (std::find(programs.begin(), programs.end(), name) == programs.end())
          error->all(FLERR,
                     "pair_style facet: the package {} lacks the per-layer program {} (it was "
                     "built with --aoti-programs single?); the plugin needs them: `{}` (the "
                     "default, all programs) or with --aoti-programs layers",
                     model_path, name, kRedeployAOTI);
    }
  } catch (const json::exception &e) {
    error->all(FLERR, "pair_style facet: the metadata of {} is incomplete ({}); write it with `{}`",
               model_path, e.what(), redeploy);
  }
  if ((int) feature_dims.size() != num_layers + 1 || num_layers < 1 || r_max <= 0.0)
    error->all(FLERR, "pair_style facet: inconsistent metadata in {}; write it with `{}`",
               model_path, redeploy);
  if (dtype_name == "float64")
    dtype = torch::kFloat64;
  else if (dtype_name == "float32")
    dtype = torch::kFloat32;
  else
    error->all(FLERR, "pair_style facet: {} has unsupported dtype {}", model_path, dtype_name);
  wire_size = dtype == torch::kFloat32 ? sizeof(float) : sizeof(double);
  if (!is_package) {
    for (const char *name : {"embed", "edge_features", "layer", "layer_forward_chunked",
                             "layer_backward_chunked", "readout"})
      if (!module.find_method(name))
        error->all(FLERR, "pair_style facet: {} lacks the method {}; write it with `{}`",
                   model_path, name, kRedeploy);
    padded_layers = module.find_method("edge_slots") && module.find_method("layer_padded");
  }
  select_device(device_request.empty() ? device_name : device_request);
  // chunking for the device type the model runs on (the file may be written for another)
  auto by_type = chunking_by_device.find(device.is_cuda() ? "cuda" : "cpu");
  if (by_type != chunking_by_device.end() && by_type->second.size() == 2) {
    chunk_edges = by_type->second[0];
    single_pass_edges = by_type->second[1];
  }
  if (chunk_edges_override >= 0) chunk_edges = chunk_edges_override;
  if (single_pass_edges_override >= 0) single_pass_edges = single_pass_edges_override;
  // TorchScript's optimising executor specialises graphs on the shapes it profiled; on the CPU,
  // where it fuses nothing, the pair count changing every MD step makes it 15-25 % slower than
  // the plain interpreter for a single-pass step (measured, benchmarks/README). On CUDA its
  // fusion may pay: kept on there.
  jit_optimize = jit_optimize_override >= 0 ? jit_optimize_override == 1 : device.is_cuda();

  if (is_package) {
    load_aoti_programs();
  } else {
    module.eval();
    for (auto p : module.parameters()) p.requires_grad_(false);
    if (device.is_cuda()) module.to(device);
  }
  loaded = true;
  announced = false;

  if (comm->me == 0) {
    std::string elems;
    for (const auto &e : model_elements) elems += " " + e;
    std::string widths;
    for (auto d : feature_dims) widths += " " + std::to_string(d);
    utils::logmesg(lmp,
                   "Facet plugin: {} ({}, {} layers, r_max {} Å, feature widths{}, {} on {}; "
                   "elements{}; facet {}, written with torch {}; libtorch {} with {} threads "
                   "per rank)\n",
                   model_path, is_package ? "AOTInductor package" : "TorchScript", num_layers,
                   r_max, widths, dtype_name, device.str(), elems, facet_version, torch_version,
                   TORCH_VERSION, at::get_num_threads());
  }
}

std::string PairFacet::load_torchscript()
{
  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
  try {
    module = torch::jit::load(model_path, torch::kCPU, extra);
  } catch (const std::exception &e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    error->all(FLERR,
               "pair_style facet: {} is not a readable Facet plugin file (corrupt, truncated, or "
               "another format such as a pair_style mliap object); write it with `{}` or `{}`. "
               "libtorch said: {}",
               model_path, kRedeploy, kRedeployAOTI, what);
  }
  if (extra[kMetadataFile].empty())
    error->all(FLERR,
               "pair_style facet: {} is a TorchScript file without Facet plugin metadata "
               "({}); write it with `{}`",
               model_path, kMetadataFile, kRedeploy);
  return extra[kMetadataFile];
}

// the programs of an AOTInductor package, after checking it can run here
void PairFacet::load_aoti_programs()
{
  const std::string problems =
      FacetPlugin::aoti_incompatibility(torch_version, device_name, cpu_isa, device.is_cuda());
  if (!problems.empty())
    error->all(FLERR,
               "pair_style facet: the AOTInductor package {} cannot run here: {}. Compile it "
               "again on this machine with the torch this plugin was built with: `{}`",
               model_path, problems, kRedeployAOTI);
  try {
    aoti = std::make_unique<FacetPlugin::AOTIModel>(model_path, num_layers, feature_dims,
                                                    device);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style facet: cannot load the AOTInductor package {}: {}; write it "
                      "again with `{}`",
               model_path, e.what(), kRedeployAOTI);
  }
}

void PairFacet::select_device(const std::string &request)
{
  if (request == "cpu") {
    device = torch::Device(torch::kCPU);
    return;
  }
  if (request.rfind("cuda", 0) != 0)
    error->all(FLERR, "pair_style facet: device must be cpu, cuda or cuda:K, not {}", request);
  if (!torch::cuda::is_available())
    error->all(FLERR,
               "pair_style facet: the model asks for CUDA but libtorch sees no GPU on this node; "
               "add `device cpu` to the pair_style line (or write the file with --device cpu), "
               "or run on a GPU node with a CUDA build of libtorch");
  int ngpu = (int) torch::cuda::device_count();
  int index = 0;
  if (request.size() > 5) {
    index = std::stoi(request.substr(5));
  } else {
    // one GPU per rank, from the node-local rank
    int local_rank = 0;
#if !defined(MPI_STUBS)
    MPI_Comm local;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_free(&local);
#endif
    index = local_rank % ngpu;
  }
  if (index < 0 || index >= ngpu)
    error->one(FLERR, "pair_style facet: GPU {} requested, this node has {}", index, ngpu);
  device = torch::Device(torch::kCUDA, index);
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ... (one element or NULL per atom type)
------------------------------------------------------------------------- */

void PairFacet::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR,
               "pair_coeff for pair_style facet: expected `pair_coeff * * <element or NULL for "
               "each of the {} atom types>`, got {} arguments",
               ntypes, narg);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for pair_style facet must be `pair_coeff * * ...`");
  std::string known;
  for (const auto &e : model_elements) known += " " + e;
  for (int t = 1; t <= ntypes; t++) {
    std::string name = arg[t + 1];
    if (name == "NULL") {
      type_map[t] = -1;
      continue;
    }
    auto it = std::find(model_elements.begin(), model_elements.end(), name);
    if (it == model_elements.end())
      error->all(FLERR,
                 "pair_coeff: element {} (atom type {}) is not in the Facet model {}, whose "
                 "elements are:{}; use one of them or NULL",
                 name, t, model_path, known);
    type_map[t] = (int) (it - model_elements.begin());
  }
  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (type_map[i] >= 0 && type_map[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_coeff for pair_style facet maps no atom type");
  if (comm->me == 0) {
    std::string table;
    for (int t = 1; t <= ntypes; t++)
      table += fmt::format(" {}->{}", t, type_map[t] >= 0 ? model_elements[type_map[t]] : "NULL");
    utils::logmesg(lmp, "Facet plugin: atom types to elements:{}\n", table);
  }
}

void PairFacet::init_style()
{
  if (!loaded) error->all(FLERR, "pair_style facet: no model loaded");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style facet requires newton pair on (ghost-atom forces and the per-layer "
               "gradient exchange are folded back to their owners): add `newton on` to the "
               "input deck");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style facet requires `units metal` (Å, eV), not units {}",
               update->unit_style);
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairFacet::init_one(int, int)
{
  return r_max;
}

/* ----------------------------------------------------------------------
   halo exchange. A row holds `w` values in the model's precision (float32 rows travel as
   float32: half the bytes); in LAMMPS' buffers each row takes `comm_width` doubles (padded to
   whole doubles). Rows are moved with memcpy; only the reverse sum reads values. The rows live
   in the staging buffer `halo` (a model on a GPU) or, on the CPU, in the feature tensor itself
   (halo_in_place: no staging copies).
------------------------------------------------------------------------- */

int PairFacet::row_doubles(int64_t w) const
{
  return (int) ((w * wire_size + sizeof(double) - 1) / sizeof(double));
}

int PairFacet::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  const int cw = comm_width;
  const int nlocal = atom->nlocal;
  if (recording) {
    for (int i = 0; i < n; i++)
      if (list[i] < nlocal) is_border[list[i]] = 1;
  } else {
    for (int i = 0; i < n; i++)
      if (list[i] < nlocal && !is_border[list[i]])
        error->one(FLERR, "pair_style facet: internal error: LAMMPS' send lists changed without "
                          "re-neighbouring; please report this with your input deck");
  }
  const size_t bytes = (size_t) comm_values * wire_size;
  for (int i = 0; i < n; i++) std::memcpy(buf + (size_t) i * cw, row(list[i]), bytes);
  packed_values += (double) n * comm_values;
  return n * cw;
}

void PairFacet::unpack_forward_comm(int n, int first, double *buf)
{
  const size_t slot = (size_t) comm_width * sizeof(double);
  if (row_stride == slot) {
    std::memcpy(row(first), buf, (size_t) n * slot);
    return;
  }
  const size_t bytes = (size_t) comm_values * wire_size;
  for (int i = 0; i < n; i++) std::memcpy(row(first + i), buf + (size_t) i * comm_width, bytes);
}

int PairFacet::pack_reverse_comm(int n, int first, double *buf)
{
  const size_t slot = (size_t) comm_width * sizeof(double);
  if (row_stride == slot) {
    std::memcpy(buf, row(first), (size_t) n * slot);
  } else {
    const size_t bytes = (size_t) comm_values * wire_size;
    for (int i = 0; i < n; i++) std::memcpy(buf + (size_t) i * comm_width, row(first + i), bytes);
  }
  packed_values += (double) n * comm_values;
  return n * comm_width;
}

template <typename T> static void add_rows(char *dst, const char *src, int w)
{
  T *d = reinterpret_cast<T *>(dst);
  const T *s = reinterpret_cast<const T *>(src);
  for (int c = 0; c < w; c++) d[c] += s[c];
}

void PairFacet::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int cw = comm_width, w = comm_values;
  for (int i = 0; i < n; i++) {
    const char *src = reinterpret_cast<const char *>(buf + (size_t) i * cw);
    if (dtype == torch::kFloat32)
      add_rows<float>(row(list[i]), src, w);
    else
      add_rows<double>(row(list[i]), src, w);
  }
}

// rows of w values: sets comm_values and comm_width (checked against the widths set in init)
void PairFacet::set_row_width(int w)
{
  comm_values = w;
  comm_width = row_doubles(w);
  if (comm_width > comm_forward || comm_width > comm_reverse)
    error->one(FLERR, "pair_style facet: internal error: exchange width {} > {}", comm_width,
               std::min(comm_forward, comm_reverse));
}

// the staging buffer sized for nall rows of w values; sets the row width and the rows
void PairFacet::halo_setup(int nall, int w)
{
  set_row_width(w);
  halo.resize((size_t) nall * comm_width);
  rows_base = reinterpret_cast<char *>(halo.data());
  row_stride = (size_t) comm_width * sizeof(double);
}

// the exchange works in `rows` ([nall, w], contiguous, on the host, in the model's dtype)
void PairFacet::halo_in_place(const torch::Tensor &rows)
{
  set_row_width((int) rows.size(1));
  rows_base = static_cast<char *>(rows.data_ptr());
  row_stride = (size_t) comm_values * wire_size;
}

// a forward exchange that records which local rows LAMMPS packs (its send lists were rebuilt)
void PairFacet::record_border_rows(int nlocal)
{
  is_border.assign(nlocal, 0);
  recording = true;
  comm->forward_comm(this, comm_width);
  recording = false;
  border_rows.clear();
  for (int i = 0; i < nlocal; i++)
    if (is_border[i]) border_rows.push_back(i);
  border_index =
      torch::from_blob(border_rows.data(), {(int64_t) border_rows.size()}, torch::kInt64)
          .to(device, false, true);
  border_valid = true;
}

// rows[k] of the buffer <- src[k] (a [rows.size(), w] tensor in the wire dtype, on the host)
void PairFacet::scatter_rows(const torch::Tensor &src, const std::vector<int64_t> &rows)
{
  const size_t bytes = (size_t) comm_values * wire_size;
  const char *p = static_cast<const char *>(src.data_ptr());
  for (size_t k = 0; k < rows.size(); k++) std::memcpy(row(rows[k]), p + k * bytes, bytes);
}

// host rows first_row.. of the buffer from src [rows, w] (any device and dtype)
void PairFacet::stage_rows(const torch::Tensor &src, int first_row)
{
  const int64_t rows = src.size(0);
  if (rows == 0) return;
  auto host = src.detach().to(torch::kCPU, dtype).contiguous();
  const size_t bytes = (size_t) comm_values * wire_size;
  const char *p = static_cast<const char *>(host.data_ptr());
  for (int64_t k = 0; k < rows; k++) std::memcpy(row(first_row + k), p + k * bytes, bytes);
}

// buffer rows first.. first+count-1 as a [count, w] tensor on the model's device
torch::Tensor PairFacet::rows_tensor(int64_t first, int64_t count)
{
  const int64_t stride = (int64_t) (row_stride / wire_size);
  auto view = torch::from_blob(row(first), {count, (int64_t) comm_values}, {stride, 1},
                               torch::TensorOptions().dtype(dtype));
  return view.to(device, dtype, false, true);
}

// All nall rows from the nlocal local ones; ghost rows copied from their owners.
torch::Tensor PairFacet::halo_forward(const torch::Tensor &h_local, int nall)
{
  if (exchange_free) return h_local.detach();    // the layers read the local rows only
  const int nlocal = (int) h_local.size(0);
  const int w = (int) h_local.size(1);
  const double t0 = now();
  torch::Tensor out;
  if (device.is_cpu()) {
    // LAMMPS copies owners' rows into the ghost rows of the result directly
    out = torch::empty({(int64_t) nall, (int64_t) w}, torch::TensorOptions().dtype(dtype));
    out.narrow(0, 0, nlocal).copy_(h_local.detach());
    halo_in_place(out);
    if (!border_valid)
      record_border_rows(nlocal);
    else
      comm->forward_comm(this, comm_width);
  } else {
    halo_setup(nall, w);    // every ghost row is received; local rows are staged
    if (!border_valid) {
      // first exchange with these send lists: stage every local row, record the packed ones
      if (nlocal > 0) stage_rows(h_local, 0);
      record_border_rows(nlocal);
    } else {
      if (!border_rows.empty()) {
        auto rows = h_local.detach().index_select(0, border_index).to(torch::kCPU, dtype);
        scatter_rows(rows.contiguous(), border_rows);
      }
      comm->forward_comm(this, comm_width);
    }
    if (nall > nlocal)
      out = torch::cat({h_local.detach(), rows_tensor(nlocal, nall - nlocal)});
    else
      out = h_local.detach().clone();
  }
  t_exchange += now() - t0;
  return out;
}

// The local rows of g_all [nall, w] with the ghost rows summed into their owners.
torch::Tensor PairFacet::halo_reverse(const torch::Tensor &g_all, int nlocal, int nall)
{
  if (exchange_free) return g_all.detach();    // no ghost rows: nothing to fold back
  const int w = (int) g_all.size(1);
  if (!border_valid)    // a forward exchange with the same send lists always comes first
    error->one(FLERR, "pair_style facet: internal error: reverse exchange before a forward one");
  const double t0 = now();
  torch::Tensor out;
  if (device.is_cpu()) {
    // LAMMPS adds the ghost rows into their owners' rows of the gradient itself (a gradient the
    // backward pass just made and nothing else reads)
    auto g = g_all.detach();
    if (!g.is_contiguous() || g.scalar_type() != dtype) g = g.to(dtype).contiguous();
    halo_in_place(g);
    comm->reverse_comm(this, comm_width);
    out = g.narrow(0, 0, nlocal);
  } else {
    halo_setup(nall, w);
    // ghost rows carry their gradients; the local rows that receive sums start at zero
    if (nall > nlocal) stage_rows(g_all.narrow(0, nlocal, nall - nlocal), nlocal);
    for (int64_t i : border_rows) std::memset(row(i), 0, row_stride);
    comm->reverse_comm(this, comm_width);
    auto local = g_all.narrow(0, 0, nlocal).detach();
    if (!border_rows.empty()) {
      auto delta = torch::empty({(int64_t) border_rows.size(), (int64_t) w},
                                torch::TensorOptions().dtype(dtype));
      char *dst = static_cast<char *>(delta.data_ptr());
      const size_t bytes = (size_t) w * wire_size;
      for (size_t k = 0; k < border_rows.size(); k++)
        std::memcpy(dst + k * bytes, row(border_rows[k]), bytes);
      out = local.index_add(0, border_index, delta.to(device, dtype, false, true));
    } else {
      out = local.clone();
    }
  }
  t_exchange += now() - t0;
  return out;
}

/* ----------------------------------------------------------------------
   ghost atoms that are periodic images of this rank's own atoms (the same tag): their features
   are those atoms' features at every layer, so a pair reads the local row instead of the ghost
   row (the gathers of the layers then touch fewer rows; the force on the pair's neighbour lands
   on the local atom, where LAMMPS' reverse communication would have put it). On one rank every
   ghost is such an image: the layers read the nlocal local rows and nothing is exchanged.
------------------------------------------------------------------------- */

void PairFacet::map_images(int nlocal, int nall)
{
  image_of.resize(nall);
  std::iota(image_of.begin(), image_of.end(), 0);
  exchange_free = false;
  if (!fold_images || !atom->tag_enable) return;
  const tagint *tag = atom->tag;
  std::unordered_map<tagint, int> local_of_tag;
  local_of_tag.reserve((size_t) nlocal);
  for (int i = 0; i < nlocal; i++) local_of_tag.emplace(tag[i], i);
  int unfolded = 0;
  for (int j = nlocal; j < nall; j++) {
    auto it = local_of_tag.find(tag[j]);
    if (it != local_of_tag.end())
      image_of[j] = it->second;
    else
      unfolded++;
  }
  exchange_free = comm->nprocs == 1 && unfolded == 0;
}

/* ----------------------------------------------------------------------
   single pass: every layer's graph kept, one backward pass layer by layer
------------------------------------------------------------------------- */

std::pair<torch::Tensor, torch::Tensor>
PairFacet::single_pass(const torch::Tensor &species, const torch::Tensor &pi,
                       const torch::Tensor &pj, const torch::Tensor &rij,
                       const torch::Tensor &mask, int nlocal, int nall)
{
  const int64_t npairs = rij.size(0);
  auto x = rij.detach().requires_grad_(true);
  auto ef = module.get_method("edge_features")({x}).toTuple();
  auto sh = ef->elements()[0].toTensor();
  auto r = ef->elements()[1].toTensor();
  // each layer gets its own graph: edge features and input features enter as leaves
  auto sh_leaf = sh.detach().requires_grad_(true);
  auto r_leaf = r.detach().requires_grad_(true);
  // with padded_layers, the per-slot edge data all layers share (slots, neighbour rows,
  // harmonics, radial basis) computed once from the leaves; its float tensors enter every
  // layer's graph as leaves in turn, and their gradients go back to sh and r once at the end
  torch::Tensor slots, nbr_pad, y_pad, y_leaf, basis_pad, basis_leaf;
  if (padded_layers) {
    auto es = module.get_method("edge_slots")({sh_leaf, r_leaf, pi, pj, nlocal}).toTuple();
    slots = es->elements()[0].toTensor();
    nbr_pad = es->elements()[1].toTensor();
    y_pad = es->elements()[2].toTensor();
    y_leaf = y_pad.detach().requires_grad_(true);
    if (!es->elements()[3].isNone()) {
      basis_pad = es->elements()[3].toTensor();
      basis_leaf = basis_pad.detach().requires_grad_(true);
    }
  }
  auto layer = module.get_method(padded_layers ? "layer_padded" : "layer");

  std::vector<torch::Tensor> ins, outs;
  auto h = module.get_method("embed")({species}).toTensor().detach();
  for (int k = 0; k < num_layers; k++) {
    torch::Tensor h_in = h;
    if (k > 0) h_in = halo_forward(outs.back(), nall).requires_grad_(true);
    torch::Tensor out;
    if (padded_layers)
      out = layer({k, h_in, nbr_pad, y_leaf, r_leaf, slots,
                   basis_leaf.defined() ? c10::IValue(basis_leaf) : c10::IValue()})
                .toTensor();
    else
      out = layer({k, h_in, sh_leaf, r_leaf, pi, pj, nlocal, 0}).toTensor();
    ins.push_back(h_in);
    outs.push_back(out);
  }
  auto h_last = outs.back().detach().requires_grad_(true);
  auto e = module.get_method("readout")({h_last, species.narrow(0, 0, nlocal)}).toTensor();
  torch::Tensor g = zeros_like_rows(nlocal, feature_dims[num_layers], h_last);
  if (nlocal > 0) {
    auto total = (e * mask).sum();
    g = torch::autograd::grad({total}, {h_last}, {}, false, false, true)[0];
    if (!g.defined()) g = zeros_like_rows(nlocal, feature_dims[num_layers], h_last);
  }
  auto g_sh = torch::zeros_like(sh_leaf);
  auto g_r = torch::zeros_like(r_leaf);
  // the edge leaves of every layer's graph: sh (or the per-slot harmonics), r, and the
  // per-slot basis when the file shares one
  std::vector<torch::Tensor> edge_leaves{padded_layers ? y_leaf : sh_leaf, r_leaf};
  if (basis_leaf.defined()) edge_leaves.push_back(basis_leaf);
  std::vector<torch::Tensor> g_edge;
  for (const auto &leaf : edge_leaves) g_edge.push_back(torch::zeros_like(leaf));
  for (int k = num_layers - 1; k >= 0; k--) {
    torch::Tensor g_h;
    if (outs[k].requires_grad() && nlocal > 0) {
      std::vector<torch::Tensor> inputs = edge_leaves;
      if (k > 0) inputs.push_back(ins[k]);
      auto grads = torch::autograd::grad({outs[k]}, inputs, {g}, false, false, true);
      for (size_t i = 0; i < edge_leaves.size(); i++)
        if (grads[i].defined()) g_edge[i] += grads[i];
      if (k > 0) g_h = grads[edge_leaves.size()];
    }
    outs[k] = torch::Tensor();
    if (k > 0) {
      if (!g_h.defined()) g_h = zeros_like_rows(nall, feature_dims[k], h_last);
      ins[k] = torch::Tensor();
      g = halo_reverse(g_h, nlocal, nall);    // every rank, every layer
    }
  }
  if (padded_layers) {
    // the per-slot edge data's gradients back to sh and r (its gathers and basis, once)
    g_r += g_edge[1];
    std::vector<torch::Tensor> shared{y_pad}, g_shared{g_edge[0]};
    if (basis_leaf.defined()) {
      shared.push_back(basis_pad);
      g_shared.push_back(g_edge[2]);
    }
    if (npairs > 0) {
      auto ge = torch::autograd::grad(shared, {sh_leaf, r_leaf}, g_shared, false, false, true);
      if (ge[0].defined()) g_sh += ge[0];
      if (ge[1].defined()) g_r += ge[1];
    }
  } else {
    g_sh += g_edge[0];
    g_r += g_edge[1];
  }
  torch::Tensor g_rij = torch::zeros_like(rij);
  if (npairs > 0) {
    auto gx = torch::autograd::grad({sh, r}, {x}, {g_sh, g_r}, false, false, true)[0];
    if (gx.defined()) g_rij = gx;
  }
  return {e.detach(), g_rij.detach()};
}

/* ----------------------------------------------------------------------
   recomputing evaluation (facet/chunks.py): forward without autograd keeping only the node
   features, backward recomputing one chunk of one layer at a time; same exchanges in the
   same order as the single pass
------------------------------------------------------------------------- */

std::pair<torch::Tensor, torch::Tensor>
PairFacet::recomputing(const torch::Tensor &species, const torch::Tensor &pi,
                       const torch::Tensor &pj, const torch::Tensor &rij,
                       const torch::Tensor &mask, int nlocal, int nall)
{
  auto fwd = module.get_method("layer_forward_chunked");
  auto bwd = module.get_method("layer_backward_chunked");
  std::vector<torch::Tensor> hs;
  hs.push_back(module.get_method("embed")({species}).toTensor().detach());
  torch::Tensor h_local;
  for (int k = 0; k < num_layers; k++) {
    h_local = fwd({k, hs[k], rij, pi, pj, nlocal, chunk_edges}).toTensor();
    if (k + 1 < num_layers) hs.push_back(halo_forward(h_local, nall));
  }
  auto h_last = h_local.detach().requires_grad_(true);
  auto e = module.get_method("readout")({h_last, species.narrow(0, 0, nlocal)}).toTensor();
  torch::Tensor g = zeros_like_rows(nlocal, feature_dims[num_layers], h_last);
  if (nlocal > 0) {
    auto total = (e * mask).sum();
    auto gg = torch::autograd::grad({total}, {h_last}, {}, false, false, true)[0];
    if (gg.defined()) g = gg;
  }
  auto g_x = torch::zeros_like(rij);
  for (int k = num_layers - 1; k >= 0; k--) {
    auto out = bwd({k, hs[k], rij, pi, pj, nlocal, g, chunk_edges, k > 0}).toTuple();
    g_x += out->elements()[0].toTensor();
    if (k > 0) g = halo_reverse(out->elements()[1].toTensor(), nlocal, nall);
    hs[k] = torch::Tensor();
  }
  return {e.detach(), g_x};
}

/* ----------------------------------------------------------------------
   AOTInductor package: embed, layer{k} forward with an exchange after each layer but the
   last, readout, then layer{k}_vjp backward (recomputing its layer) with a reverse exchange
   before each layer but the first; one chunk of pairs up to single_pass_edges
------------------------------------------------------------------------- */

std::pair<torch::Tensor, torch::Tensor>
PairFacet::aoti_evaluation(const torch::Tensor &species, const torch::Tensor &rij,
                           const torch::Tensor &mask, int nlocal, int nall, bool chunked)
{
  aoti->plan(pair_i.data(), pair_j.data(), (int64_t) pair_i.size(), nlocal, nall,
             chunked ? chunk_edges : 0);
  std::vector<torch::Tensor> hs{aoti->embed(species)};
  torch::Tensor h_local;
  for (int k = 0; k < num_layers; k++) {
    h_local = aoti->layer_forward(k, hs[k], rij);
    if (k + 1 < num_layers) hs.push_back(halo_forward(h_local, nall));
  }
  auto ev = aoti->readout_vjp(h_local, species.narrow(0, 0, nlocal));
  auto e = ev.first * mask;
  auto g = ev.second * mask.unsqueeze(1);
  auto g_x = torch::zeros_like(rij);
  for (int k = num_layers - 1; k >= 0; k--) {
    auto out = aoti->layer_backward(k, hs[k], rij, g, k > 0);
    g_x += out.first;
    if (k > 0) g = halo_reverse(out.second, nlocal, nall);
    hs[k] = torch::Tensor();
  }
  return {e, g_x};
}

/* ---------------------------------------------------------------------- */

void PairFacet::compute(int eflag, int vflag)
{
  const double t_start = now();
  ev_init(eflag, vflag);

  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int inum = list->inum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cut2 = r_max * r_max;
  // the send lists of the exchange change whenever LAMMPS re-neighbours (borders)
  if (neighbor->ago == 0 || nlocal != border_nlocal || nall != border_nall) {
    border_valid = false;
    map_images(nlocal, nall);
  }
  border_nlocal = nlocal;
  border_nall = nall;
  // rows of the feature tensors the layers read: all atoms, or the local ones on one rank
  const int nrows = exchange_free ? nlocal : nall;

  // pair list grouped by centre, centres ascending (the chunked evaluation needs that)
  pair_i.clear();
  pair_j.clear();
  rij_buf.clear();
  mask_buf.assign(nlocal, 0.0);
  std::vector<int> centres;
  centres.reserve(inum);
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i < nlocal && type_map[type[i]] >= 0) centres.push_back(i);
  }
  std::sort(centres.begin(), centres.end());
  for (int i : centres) {
    mask_buf[i] = 1.0;
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_map[type[j]] < 0) continue;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      if (dx * dx + dy * dy + dz * dz >= cut2) continue;
      pair_i.push_back(i);
      pair_j.push_back(image_of[j]);
      rij_buf.push_back(dx);
      rij_buf.push_back(dy);
      rij_buf.push_back(dz);
    }
  }
  const int64_t npairs = (int64_t) pair_i.size();
  species_buf.resize(nall);
  for (int k = 0; k < nall; k++) species_buf[k] = std::max(type_map[type[k]], 0);

  // views of the host buffers (valid during this call), moved/cast only where needed
  auto as_input = [&](void *data, at::IntArrayRef shape, torch::Dtype host, torch::Dtype want) {
    auto t = torch::from_blob(data, shape, torch::TensorOptions().dtype(host));
    if (device.is_cpu() && host == want) return t;
    return t.to(device, want, false, true);
  };
  auto species = as_input(species_buf.data(), {nrows}, torch::kInt64, torch::kInt64);
  auto pi = as_input(pair_i.data(), {npairs}, torch::kInt64, torch::kInt64);
  auto pj = as_input(pair_j.data(), {npairs}, torch::kInt64, torch::kInt64);
  auto rij = as_input(rij_buf.data(), {npairs, 3}, torch::kFloat64, dtype);
  auto mask = as_input(mask_buf.data(), {nlocal}, torch::kFloat64, dtype);

  const bool recompute = chunk_edges > 0 && npairs > single_pass_edges;
  const char *evaluation = recompute ? "recomputing" : "single pass";
  if (!announced && comm->me == 0) {
    const std::string exchanges = exchange_free
        ? std::string("one rank: ghost atoms read as the local atoms they are periodic images "
                      "of, no exchanges")
        : fmt::format("per-layer halo exchange ({} exchanges of up to {} doubles per ghost atom "
                      "each way{})",
                      num_layers - 1, comm_forward,
                      fold_images && atom->tag_enable
                          ? "; ghost images of a rank's own atoms read as those atoms"
                          : "");
    utils::logmesg(lmp,
                   "Facet plugin: {}, {} on {}; recomputing evaluation in chunks of {} pairs "
                   "above {} pairs per rank{}; {}\n",
                   exchanges, dtype_name, device.str(), chunk_edges,
                   single_pass_edges, chunk_edges > 0 ? "" : " (off)",
                   aoti ? "AOTInductor programs (every layer recomputed in its backward)"
                   : jit_optimize ? "TorchScript executor optimising"
                                  : "TorchScript executor plain (jit_optimize no)");
    announced = true;
  }
  if (comm->me == 0 && last_evaluation != evaluation)
    utils::logmesg(lmp, "Facet plugin: {} evaluation on rank 0 ({} local atoms, {} pairs)\n",
                   evaluation, nlocal, npairs);
  last_evaluation = evaluation;

  torch::Tensor e_local, g_rij;
  torch::jit::GraphOptimizerEnabledGuard executor(jit_optimize);
  try {
    auto res = aoti ? aoti_evaluation(species, rij, mask, nlocal, nrows, recompute)
        : recompute ? recomputing(species, pi, pj, rij, mask, nlocal, nrows)
                    : single_pass(species, pi, pj, rij, mask, nlocal, nrows);
    e_local = res.first.to(torch::kCPU, torch::kFloat64).contiguous();
    g_rij = res.second.to(torch::kCPU, torch::kFloat64).contiguous();
  } catch (const std::exception &err) {
    std::string what = err.what();
    error->one(FLERR, "pair_style facet: the model failed on rank {} ({} local atoms, {} pairs): {}",
               comm->me, nlocal, npairs, what.substr(0, 2000));
  }

  // energies
  const double *e = e_local.data_ptr<double>();
  if (eflag_either) {
    for (int i : centres) {
      if (eflag_global) eng_vdwl += e[i];
      if (eflag_atom) eatom[i] += e[i];
    }
  }
  // forces and virial from the pair gradients
  const double *g = g_rij.data_ptr<double>();
  const double *r = rij_buf.data();
  for (int64_t p = 0; p < npairs; p++) {
    const int i = (int) pair_i[p], j = (int) pair_j[p];
    const double gx = g[3 * p], gy = g[3 * p + 1], gz = g[3 * p + 2];
    f[i][0] += gx;
    f[i][1] += gy;
    f[i][2] += gz;
    f[j][0] -= gx;
    f[j][1] -= gy;
    f[j][2] -= gz;
    if (vflag_either) {
      const double rx = r[3 * p], ry = r[3 * p + 1], rz = r[3 * p + 2];
      double v[6] = {-rx * gx, -ry * gy, -rz * gz, -rx * gy, -rx * gz, -ry * gz};
      if (vflag_global)
        for (int c = 0; c < 6; c++) virial[c] += v[c];
      if (vflag_atom)
        for (int c = 0; c < 6; c++) {
          vatom[i][c] += 0.5 * v[c];
          vatom[j][c] += 0.5 * v[c];
        }
    }
  }
  n_calls++;
  t_total += now() - t_start;
}

/* ----------------------------------------------------------------------
   end of a run: where the pair style's time went (every rank calls this)
------------------------------------------------------------------------- */

void PairFacet::finish()
{
  double mine[3] = {t_total, t_exchange, packed_values}, sum[3], mx[3];
  MPI_Allreduce(mine, sum, 3, MPI_DOUBLE, MPI_SUM, world);
  MPI_Allreduce(mine, mx, 3, MPI_DOUBLE, MPI_MAX, world);
  long calls = n_calls;
  if (comm->me == 0 && calls > 0) {
    const double np = comm->nprocs;
    utils::logmesg(lmp,
                   "Facet plugin: {} calls; per call and rank (average / max over {} ranks): "
                   "pair style {:.3f} / {:.3f} ms, of which halo exchanges {:.3f} / {:.3f} ms "
                   "({:.1f} % of the average), {:.0f} / {:.0f} values packed\n",
                   calls, comm->nprocs, 1e3 * sum[0] / np / calls, 1e3 * mx[0] / calls,
                   1e3 * sum[1] / np / calls, 1e3 * mx[1] / calls,
                   sum[0] > 0 ? 100.0 * sum[1] / sum[0] : 0.0, sum[2] / np / calls,
                   mx[2] / calls);
  }
  n_calls = 0;
  t_total = t_exchange = packed_values = 0.0;
}

double PairFacet::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) halo.capacity() * sizeof(double);
  bytes += (double) (pair_i.capacity() + pair_j.capacity() + species_buf.capacity()) * 8;
  bytes += (double) image_of.capacity() * sizeof(int);
  bytes += (double) (rij_buf.capacity() + mask_buf.capacity()) * sizeof(double);
  return bytes;
}
