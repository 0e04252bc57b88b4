/* Facet AOTInductor packages in the plugin: see facet_aoti.h. */

#include "facet_aoti.h"

#include <ATen/Version.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/version.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <unistd.h>

namespace FacetPlugin {

namespace {

constexpr const char *kMetadataRecord = "extra/facet.json";

bool ends_with(const std::string &s, const std::string &tail)
{
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string lower(std::string s)
{
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// x86 vector ISAs in increasing order, as Inductor ("avx512") and ATen ("AVX512") name them;
// -1: another name (not checked here, e.g. ARM's)
int isa_level(const std::string &name)
{
  const std::string s = lower(name);
  if (s == "avx512") return 2;
  if (s == "avx2") return 1;
  if (s == "default" || s.empty()) return 0;
  return -1;
}

std::string first_line(const std::string &s)
{
  return s.substr(0, s.find('\n'));
}

/* A fresh directory under $TMPDIR (or /tmp) that is $TMPDIR while this object lives and is
   removed with everything in it when it goes. AOTIModelPackageLoader extracts each program into
   a directory under $TMPDIR that only its destructor removes, and a LAMMPS error exit runs no
   destructors: every failed job would leave them behind (measured: 6 directories per rank for
   a 2-layer package). Loaded programs stay mapped once their files are gone (Linux). */
class ScratchTmpdir {
 public:
  ScratchTmpdir()
  {
    const char *base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/facet-aoti-XXXXXX";
    if (!mkdtemp(pattern.data()))
      throw std::runtime_error("cannot create a scratch directory like " + pattern);
    dir = pattern;
    if (base) previous = base;
    setenv("TMPDIR", dir.c_str(), 1);
  }
  ~ScratchTmpdir()
  {
    if (previous)
      setenv("TMPDIR", previous->c_str(), 1);
    else
      unsetenv("TMPDIR");
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  ScratchTmpdir(const ScratchTmpdir &) = delete;
  ScratchTmpdir &operator=(const ScratchTmpdir &) = delete;

 private:
  std::string dir;
  std::optional<std::string> previous;
};

}    // namespace

std::string read_aoti_metadata(const std::string &path)
{
  {
    // a zip archive starts with "PK"; anything else is not a package
    std::ifstream probe(path, std::ios::binary);
    char magic[2] = {0, 0};
    probe.read(magic, 2);
    if (!probe || magic[0] != 'P' || magic[1] != 'K') return "";
  }
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    for (const auto &name : reader.getAllRecords()) {
      if (!ends_with(name, kMetadataRecord)) continue;
      auto record = reader.getRecord(name);
      return std::string(static_cast<const char *>(std::get<0>(record).get()),
                         std::get<1>(record));
    }
  } catch (const std::exception &e) {
    throw std::runtime_error("cannot read the archive: " + first_line(e.what()));
  }
  return "";
}

std::string aoti_incompatibility(const std::string &torch_version, const std::string &device,
                                 const std::string &cpu_isa, bool want_cuda)
{
  std::vector<std::string> problems;
  const std::string built = torch_version.substr(0, torch_version.find('+'));
  const std::string here = std::string(TORCH_VERSION).substr(0, std::string(TORCH_VERSION).find('+'));
  if (built != here)
    problems.push_back("it was compiled with torch " + torch_version +
                       " and this plugin runs libtorch " + TORCH_VERSION +
                       " (AOTInductor packages are not portable between torch versions)");
  const std::string want = want_cuda ? "cuda" : "cpu";
  if (device != want)
    problems.push_back("it was compiled for " + device + " and is asked to run on " + want);
  if (device == "cpu" && !want_cuda && !cpu_isa.empty()) {
    const std::string capability = at::get_cpu_capability();
    // Inductor names the ISA and its extensions ("avx512 avx512_vnni amx_tile"): the first
    // word is what ATen's capability can tell
    const std::string base = cpu_isa.substr(0, cpu_isa.find(' '));
    const int needed = isa_level(base), here_level = isa_level(capability);
    const bool unknown_x86 = needed < 0 && lower(base).rfind("avx", 0) == 0;
    if (unknown_x86 || (needed > 0 && here_level >= 0 && needed > here_level))
      problems.push_back("it was compiled for the CPU instruction set " + cpu_isa +
                         ", which this CPU lacks (libtorch's capability here: " + capability +
                         "; check ATEN_CPU_CAPABILITY if set)");
  }
  std::string out;
  for (const auto &p : problems) out += (out.empty() ? "" : "; ") + p;
  return out;
}

/* ---------------------------------------------------------------------- */

AOTIModel::AOTIModel(const std::string &path, int num_layers_, std::vector<long> dims,
                     torch::Device device_) :
    num_layers(num_layers_), feature_dims(std::move(dims)), device(device_)
{
  const c10::DeviceIndex index = device.is_cuda() ? device.index() : -1;
  ScratchTmpdir scratch;    // the extracted programs are removed when loading is done
  auto load = [&](const std::string &name) {
    try {
      return std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, name, false, 1,
                                                                       index);
    } catch (const std::exception &e) {
      throw std::runtime_error("loading program " + name + " failed: " + first_line(e.what()));
    }
  };
  embed_program = load("embed");
  readout_program = load("readout");
  for (int k = 0; k < num_layers; k++) {
    forward_programs.push_back(load("layer" + std::to_string(k)));
    vjp_programs.push_back(load("layer" + std::to_string(k) + "_vjp"));
  }
}

AOTIModel::~AOTIModel() = default;

void AOTIModel::plan(const int64_t *pair_i, const int64_t *pair_j, int64_t npairs, int nlocal,
                     int nall, int64_t chunk_edges)
{
  chunks.clear();
  nlocal_ = nlocal;
  if (nlocal == 0) return;
  // first pair of every row (pairs are sorted by centre)
  std::vector<int64_t> start(nlocal + 1, 0);
  for (int64_t p = 0; p < npairs; p++) start[pair_i[p] + 1]++;
  for (int i = 0; i < nlocal; i++) start[i + 1] += start[i];
  // row cuts as facet.chunks.row_chunks: a chunk ends at the first row starting at or after
  // a multiple of chunk_edges
  std::vector<int64_t> cuts{0};
  if (chunk_edges > 0 && npairs > chunk_edges) {
    int64_t target = chunk_edges;
    for (int i = 1; i < nlocal; i++)
      if (start[i] >= target) {
        cuts.push_back(i);
        target = (start[i] / chunk_edges + 1) * chunk_edges;
      }
  }
  cuts.push_back(nlocal);

  position.assign(nall, -1);
  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64);
  for (size_t c = 0; c + 1 < cuts.size(); c++) {
    Chunk ch;
    ch.a = cuts[c];
    ch.b = cuts[c + 1];
    ch.ea = start[ch.a];
    ch.eb = start[ch.b];
    const int64_t rows = ch.b - ch.a, edges = ch.eb - ch.ea;
    // rows read: the chunk's own, then every other neighbour in order of first appearance
    std::vector<int64_t> read;
    read.reserve(rows + edges);
    for (int64_t i = ch.a; i < ch.b; i++) {
      position[i] = (int64_t) read.size();
      read.push_back(i);
    }
    for (int64_t p = ch.ea; p < ch.eb; p++)
      if (position[pair_j[p]] < 0) {
        position[pair_j[p]] = (int64_t) read.size();
        read.push_back(pair_j[p]);
      }
    int64_t width = 2;
    for (int64_t i = ch.a; i < ch.b; i++) width = std::max(width, start[i + 1] - start[i]);
    ch.padded = std::min({(int64_t) read.size(), edges, rows}) < 2;
    const int64_t shift = ch.padded ? 2 : 0;                 // dummy rows first
    const int64_t pad = edges + (ch.padded ? 2 : 0);         // pad value: one past every pair
    std::vector<int64_t> nbr(edges + shift);
    for (int64_t p = ch.ea; p < ch.eb; p++) nbr[p - ch.ea] = position[pair_j[p]] + shift;
    if (ch.padded) {    // two dummy pairs last, between the two dummy atoms
      nbr[edges] = 0;
      nbr[edges + 1] = 1;
    }
    std::vector<int64_t> slots((rows + shift) * width, pad);
    for (int64_t i = ch.a; i < ch.b; i++)
      for (int64_t p = start[i]; p < start[i + 1]; p++)
        slots[(i - ch.a + shift) * width + (p - start[i])] = p - ch.ea;
    for (int64_t r : read) position[r] = -1;
    ch.read = torch::tensor(read, long_opts).to(device);
    ch.nbr = torch::tensor(nbr, long_opts).to(device);
    ch.slots = torch::from_blob(slots.data(), {rows + shift, width}, long_opts).to(device, false, true);
    chunks.push_back(std::move(ch));
  }
}

// (h of the rows read, renumbered neighbours, r_ij of the chunk, slot map), padded if needed
std::vector<torch::Tensor> AOTIModel::chunk_inputs(const Chunk &c, const torch::Tensor &h_all,
                                                   const torch::Tensor &rij)
{
  auto h = h_all.index_select(0, c.read);
  auto x = rij.narrow(0, c.ea, c.eb - c.ea);
  if (c.padded) {
    h = torch::cat({torch::zeros({2, h.size(1)}, h.options()), h});
    auto dummy = torch::zeros({2, 3}, x.options());
    dummy.select(1, 0).fill_(1.0);
    x = torch::cat({x, dummy});
  } else {
    x = x.contiguous();
  }
  return {h.contiguous(), c.nbr, x, c.slots};
}

torch::Tensor AOTIModel::embed(const torch::Tensor &species)
{
  if (species.size(0) >= 2) return embed_program->run({species})[0];
  auto out = embed_program->run({torch::cat({torch::zeros({2}, species.options()), species})})[0];
  return out.narrow(0, 2, species.size(0));
}

std::pair<torch::Tensor, torch::Tensor> AOTIModel::readout_vjp(const torch::Tensor &h,
                                                               const torch::Tensor &species)
{
  const int64_t n = h.size(0);
  if (n == 0)
    return {torch::zeros({0}, h.options()), torch::zeros_like(h)};
  if (n >= 2) {
    auto out = readout_program->run({h.contiguous(), species.contiguous()});
    return {out[0], out[1]};
  }
  auto out = readout_program->run({torch::cat({torch::zeros({2, h.size(1)}, h.options()), h}),
                                   torch::cat({torch::zeros({2}, species.options()), species})});
  return {out[0].narrow(0, 2, n), out[1].narrow(0, 2, n)};
}

torch::Tensor AOTIModel::layer_forward(int k, const torch::Tensor &h_all, const torch::Tensor &rij)
{
  auto out = torch::empty({nlocal_, (int64_t) feature_dims[k + 1]}, h_all.options());
  for (const auto &c : chunks) {
    auto res = forward_programs[k]->run(chunk_inputs(c, h_all, rij))[0];
    if (c.padded) res = res.narrow(0, 2, c.b - c.a);
    out.narrow(0, c.a, c.b - c.a).copy_(res);
  }
  return out;
}

std::pair<torch::Tensor, torch::Tensor> AOTIModel::layer_backward(int k,
                                                                  const torch::Tensor &h_all,
                                                                  const torch::Tensor &rij,
                                                                  const torch::Tensor &grad_out,
                                                                  bool need_grad_h)
{
  auto grad_x = torch::zeros_like(rij);
  auto grad_h = need_grad_h ? torch::zeros_like(h_all) : torch::empty({0, h_all.size(1)},
                                                                      h_all.options());
  for (const auto &c : chunks) {
    auto inputs = chunk_inputs(c, h_all, rij);
    auto g = grad_out.narrow(0, c.a, c.b - c.a);
    if (c.padded) g = torch::cat({torch::zeros({2, g.size(1)}, g.options()), g});
    inputs.push_back(g.contiguous());
    auto res = vjp_programs[k]->run(inputs);
    auto gh = res[0], gr = res[1];
    if (c.padded) gh = gh.narrow(0, 2, gh.size(0) - 2);
    grad_x.narrow(0, c.ea, c.eb - c.ea).copy_(gr.narrow(0, 0, c.eb - c.ea));
    if (need_grad_h) grad_h.index_add_(0, c.read, gh);
  }
  return {grad_x, grad_h};
}

}    // namespace FacetPlugin
