/* Facet AOTInductor packages (`facet-deploy model.pt --format aoti`, a .pt2 archive) run by
   libtorch's AOTIModelPackageLoader: no TorchScript, no Python.

   The package holds named programs (facet/aoti.py): `embed`, `readout`, and per layer k
   `layer{k}` (forward) and `layer{k}_vjp` (recomputes the layer and returns the gradients with
   respect to its input features and r_ij), plus the metadata file extra/facet.json. Every
   program takes a neighbour-slot map instead of centre indices and needs each size >= 2; this
   class builds the maps (one per chunk of output rows, reused by every layer of a call) and pads
   small calls with two isolated dummy atoms and two unused dummy pairs, as facet.aoti does.

   A call is the recomputing evaluation of facet/chunks.py over these programs: the forward
   keeps only node features, the backward recomputes one chunk of one layer at a time, so memory
   follows the chunk, not the system. One chunk covers everything up to `single_pass_edges`.
*/

#ifndef FACET_AOTI_H
#define FACET_AOTI_H

#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace FacetPlugin {

/* The contents of extra/facet.json if `path` is a zip archive holding one ("" if it is not a
   zip archive or has no such file: e.g. a TorchScript file). Throws std::runtime_error with a
   message when the archive cannot be read. */
std::string read_aoti_metadata(const std::string &path);

/* What keeps a package from running with this libtorch on this CPU ("" when nothing):
   its torch version, device and CPU instruction set against this process's. */
std::string aoti_incompatibility(const std::string &torch_version, const std::string &device,
                                 const std::string &cpu_isa, bool want_cuda);

class AOTIModel {
 public:
  // Loads the programs embed, readout, layer{k}, layer{k}_vjp (k < num_layers) of `path`.
  // Throws std::runtime_error naming the program that failed.
  AOTIModel(const std::string &path, int num_layers, std::vector<long> feature_dims,
            torch::Device device);
  ~AOTIModel();

  /* The chunks of a call: local atoms 0..nlocal-1 are the output rows, pair p is centred on
     pair_i[p] (ascending) with neighbour pair_j[p] (local or ghost, < nall). Chunks of about
     `chunk_edges` pairs (rows never split); chunk_edges <= 0: one chunk. */
  void plan(const int64_t *pair_i, const int64_t *pair_j, int64_t npairs, int nlocal, int nall,
            int64_t chunk_edges);
  size_t num_chunks() const { return chunks.size(); }

  torch::Tensor embed(const torch::Tensor &species);    // [n] -> h_0 [n, d_0]
  // per-atom energies [n] and d(sum e)/dh [n, d_L] of features h [n, d_L]
  std::pair<torch::Tensor, torch::Tensor> readout_vjp(const torch::Tensor &h,
                                                      const torch::Tensor &species);
  // layer k on all rows h_all [nall, d_k]: features of the nlocal local atoms [nlocal, d_k+1]
  torch::Tensor layer_forward(int k, const torch::Tensor &h_all, const torch::Tensor &rij);
  // its VJP for grad_out [nlocal, d_k+1]: (dE/drij [npairs, 3], dE/dh_all [nall, d_k] or an
  // empty tensor when !need_grad_h)
  std::pair<torch::Tensor, torch::Tensor> layer_backward(int k, const torch::Tensor &h_all,
                                                         const torch::Tensor &rij,
                                                         const torch::Tensor &grad_out,
                                                         bool need_grad_h);

 private:
  struct Chunk {
    int64_t a, b;          // output rows a..b-1
    int64_t ea, eb;        // pairs ea..eb-1
    torch::Tensor read;    // rows of h_all the chunk reads (its own first), [n_read]
    torch::Tensor nbr;     // neighbours renumbered into `read` (+2 if padded, dummies last)
    torch::Tensor slots;   // [rows (+2), M >= 2] pair indices per row, padded with E (E + 2)
    bool padded;           // a size below 2: two dummy atoms first, two dummy pairs last
  };
  std::vector<Chunk> chunks;
  int64_t nlocal_ = 0;    // output rows of the planned call
  int num_layers;
  std::vector<long> feature_dims;
  torch::Device device;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> embed_program, readout_program;
  std::vector<std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> forward_programs,
      vjp_programs;
  std::vector<int64_t> position;    // scratch of plan(): row of an atom in the chunk's `read`

  std::vector<torch::Tensor> chunk_inputs(const Chunk &c, const torch::Tensor &h_all,
                                          const torch::Tensor &rij);
};

}    // namespace FacetPlugin

#endif
