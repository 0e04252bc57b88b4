/* pair_style facet: Facet machine-learned interatomic potentials in LAMMPS through libtorch.

   Loaded with `plugin load facetplugin.so`. Reads the TorchScript file written by
   `facet-deploy model.pt --format plugin`, or the AOTInductor package (.pt2) written by
   `facet-deploy model.pt --format aoti` (facet_aoti.h), and runs the model layer by layer on the local atoms
   of each rank; between layers the features of ghost atoms are refreshed from their owners with
   this pair style's forward communication, and in the backward pass the gradients that land on
   ghost atoms are summed into their owners with its reverse communication. A ghost shell of one
   cutoff (LAMMPS' default comm cutoff) suffices and no ghost features are computed.
   A ghost atom that is a periodic image of one of the rank's own atoms is read as that atom
   (`fold_images yes`, the default): on one rank every ghost is, so the layers read the local
   rows only and no exchanges are made.
*/

#ifndef LMP_PAIR_FACET_H
#define LMP_PAIR_FACET_H

#include "pair.h"

#include "facet_aoti.h"

#include <torch/script.h>

#include <map>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairFacet : public Pair {
 public:
  PairFacet(class LAMMPS *);
  ~PairFacet() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;
  void finish() override;

 protected:
  void allocate();
  void load_model();
  std::string load_torchscript();    // loads `module`, returns its metadata (JSON)
  void load_aoti_programs();
  void select_device(const std::string &request);

  // per-layer halo exchange through LAMMPS' communication of this pair style
  torch::Tensor halo_forward(const torch::Tensor &h_local, int nall);
  torch::Tensor halo_reverse(const torch::Tensor &g_all, int nlocal, int nall);

  // the two evaluations; both return (per-atom energies of local atoms, dE/drij)
  std::pair<torch::Tensor, torch::Tensor> single_pass(const torch::Tensor &species,
                                                      const torch::Tensor &pi,
                                                      const torch::Tensor &pj,
                                                      const torch::Tensor &rij,
                                                      const torch::Tensor &mask, int nlocal,
                                                      int nall);
  std::pair<torch::Tensor, torch::Tensor> recomputing(const torch::Tensor &species,
                                                      const torch::Tensor &pi,
                                                      const torch::Tensor &pj,
                                                      const torch::Tensor &rij,
                                                      const torch::Tensor &mask, int nlocal,
                                                      int nall);
  // the same evaluation over the programs of an AOTInductor package
  std::pair<torch::Tensor, torch::Tensor> aoti_evaluation(const torch::Tensor &species,
                                                          const torch::Tensor &rij,
                                                          const torch::Tensor &mask, int nlocal,
                                                          int nall, bool chunked);

  std::string model_path;
  std::string device_request;           // "" = from the file's metadata
  long chunk_edges_override = -1;       // < 0: from the file's metadata
  long single_pass_edges_override = -1;
  double single_pass_memory_mib = -1.0;  // < 0: automatic budget (see size_single_pass)
  int jit_optimize_override = -1;       // < 0: on for CUDA, off for the CPU
  bool jit_optimize = false;

  torch::jit::Module module;
  std::unique_ptr<FacetPlugin::AOTIModel> aoti;    // set: the file is an AOTInductor package
  std::string cpu_isa;                             // AOTI: the CPU ISA it was compiled for
  int fused_kernels = 0;    // AOTI: version of the facet:: operators its programs call (0: none)
  // the file has edge_slots/layer_padded (per-slot edge data shared by all layers; files
  // written before them call `layer`, which recomputes it per layer)
  bool padded_layers = false;
  bool loaded = false;
  torch::Device device = torch::Device(torch::kCPU);
  torch::Dtype dtype = torch::kFloat64;
  std::string dtype_name, device_name;
  std::vector<std::string> model_elements;
  std::vector<long> feature_dims;  // embedding width, then the output width of every layer
  int num_layers = 0;
  double r_max = 0.0;
  long chunk_edges = 0, single_pass_edges = 0;
  long single_pass_bytes_per_pair = 0;  // from the metadata; 0: unknown (older files, packages)
  void size_single_pass(bool malloc_tuned);
  std::map<std::string, std::vector<long>> chunking_by_device;
  std::string facet_version, torch_version;

  int *type_map = nullptr;  // LAMMPS type -> model element index, -1 for NULL

  // host buffer of the exchange: rows of all (local + ghost) atoms, `comm_width` doubles each
  // (float32 models: rows of float32 values, padded to whole doubles).
  // Only the rows LAMMPS packs ("border" local atoms: those in the send lists) and the ghost
  // rows move between the model's device and this buffer. The border rows are recorded during
  // the first exchange after the send lists were (re)built (re-neighbouring, or a change of
  // nlocal/nall); until then every local row is staged.
  // On the CPU the exchanges work in the feature tensors themselves instead (halo_in_place):
  // forward, LAMMPS fills the ghost rows of the [nall, w] tensor the next layer reads; reverse,
  // it adds the ghost rows of the gradient into their owners' rows of the same tensor.
  std::vector<double> halo;
  int comm_width = 0;     // doubles per row in LAMMPS' buffers
  int comm_values = 0;    // values per row, in the model's precision
  size_t wire_size = sizeof(double);
  char *rows_base = nullptr;    // row 0 of the rows being exchanged (halo or a tensor)
  size_t row_stride = 0;        // bytes from one row to the next there
  char *row(int64_t i) { return rows_base + (size_t) i * row_stride; }
  int row_doubles(int64_t w) const;
  void set_row_width(int w);
  void halo_setup(int nall, int w);
  void halo_in_place(const torch::Tensor &rows);
  void record_border_rows(int nlocal);
  void scatter_rows(const torch::Tensor &src, const std::vector<int64_t> &rows);
  torch::Tensor rows_tensor(int64_t first, int64_t count);
  bool border_valid = false, recording = false;
  std::vector<char> is_border;          // [nlocal]: 1 if LAMMPS packs this local row
  std::vector<int64_t> border_rows;     // sorted local rows that LAMMPS packs
  torch::Tensor border_index;           // the same, on the model's device
  int border_nlocal = -1, border_nall = -1;
  void stage_rows(const torch::Tensor &src, int first_row);

  // periodic images: image_of[j] (j < nall) is the local atom ghost j is an image of (the same
  // tag), or j itself when it has none here (local atoms: themselves). Rebuilt whenever the send
  // lists are (re-neighbouring). exchange_free: one rank and every ghost folded, so the layers
  // read the nlocal local rows and the exchanges are skipped.
  bool fold_images = true;
  bool exchange_free = false;
  std::vector<int> image_of;
  void map_images(int nlocal, int nall);

  // per-call scratch (kept to avoid reallocations)
  std::vector<int64_t> pair_i, pair_j, species_buf;
  std::vector<double> rij_buf, mask_buf;

  bool announced = false;
  std::string last_evaluation;

  // timings of the current run (printed and reset by finish())
  long n_calls = 0;
  double t_total = 0.0, t_exchange = 0.0;    // seconds in compute() and in the exchanges
  double packed_values = 0.0;                // values packed for the exchanges
};

}    // namespace LAMMPS_NS

#endif
