// Load a Facet AOTInductor package with libtorch and run energy + dE/drij (no TorchScript).
// usage: facet_aoti <package.pt2> <input dir: shape.txt species.bin neighbour.bin rij.bin slots.bin>
#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>
#include <chrono>
#include <fstream>
#include <iostream>

static at::Tensor read(const std::string& path, at::IntArrayRef shape, at::ScalarType t) {
  auto x = torch::empty(shape, torch::dtype(t));
  std::ifstream f(path, std::ios::binary);
  f.read(static_cast<char*>(x.data_ptr()), x.nbytes());
  if (!f) throw std::runtime_error("short read: " + path);
  return x;
}

int main(int argc, char** argv) {
  if (argc < 3) { std::cerr << "usage: facet_aoti package.pt2 input_dir\n"; return 2; }
  at::set_num_threads(1);
  std::string d = argv[2];
  int64_t n, e, m; int is64;
  std::ifstream(d + "/shape.txt") >> n >> e >> m >> is64;
  auto ft = is64 ? torch::kFloat64 : torch::kFloat32;
  std::vector<at::Tensor> inputs = {
      read(d + "/species.bin", {n}, torch::kLong), read(d + "/neighbour.bin", {e}, torch::kLong),
      read(d + "/rij.bin", {e, 3}, ft), read(d + "/slots.bin", {n, m}, torch::kLong)};
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  auto out = loader.run(inputs);
  auto t0 = std::chrono::steady_clock::now();
  out = loader.run(inputs);
  auto t1 = std::chrono::steady_clock::now();
  std::cout.precision(17);
  std::cout << "energy " << out[0].sum().item<double>() << "\n";
  std::cout << "grad_abs_sum " << out[1].abs().sum().item<double>() << "\n";
  std::cout << "ms_per_call " << std::chrono::duration<double, std::milli>(t1 - t0).count() << "\n";
  return 0;
}
