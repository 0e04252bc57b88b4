// Fused CPU kernel of Facet's equivariant layer norm (facet/layers.py, E3LayerNorm) on
// component-major irrep blocks, with the per-channel gain that follows it in a FacetLayer.
//
// Per row r of the blocks x_b [n, d_b, mul_b] (b < ns: the scalar blocks, d_b = 1):
//
//   c      = x, the scalars centred by their mean over all scalar channels (N_s of them)
//   rms_g  = sqrt(sum_{components of group g} c^2 / D_g + eps)
//   y      = c / (rms_g + eps) * gain[channel]          (gain optional: 1)
//
// with one group over all D components ("joint" mode), or two ("separate": the scalars, and
// every l > 0 component). The backward kernel recomputes c and the RMS from x and returns the
// gradient for the blocks only (the gain is a frozen weight: inference). Both are one pass per
// row over ~500 values instead of ~25 ATen calls (and their autograd nodes) per layer.
//
// Registered as facet::block_norm and facet::block_norm_backward; built with the other fused
// kernels by facet/ops and compiled into the LAMMPS plugin (CMakeLists.txt).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace {

struct NormShape {
  int64_t n = 0, blocks = 0, ns = 0;
  int64_t scalars = 0, dim = 0;   // N_s, D
  bool two_groups = false;        // separate mode with both scalars and l > 0 blocks
  double group_dim[2] = {0, 0};   // components per RMS group
  // the RMS group of block b: 0, or 1 for the l > 0 blocks in separate mode
  int group(int64_t b) const { return two_groups && b >= ns ? 1 : 0; }
  std::vector<int64_t> d, mul, gain_offset;
};

NormShape check_inputs(at::TensorList xs, int64_t num_scalar_blocks, bool joint,
                       const c10::optional<at::Tensor>& gain) {
  TORCH_CHECK(!xs.empty(), "facet::block_norm: no blocks");
  NormShape s;
  s.blocks = static_cast<int64_t>(xs.size());
  s.ns = num_scalar_blocks;
  TORCH_CHECK(s.ns >= 0 && s.ns <= s.blocks, "facet::block_norm: num_scalar_blocks ", s.ns,
              " out of range for ", s.blocks, " blocks");
  s.n = xs[0].size(0);
  int64_t channels = 0;
  for (int64_t b = 0; b < s.blocks; b++) {
    const auto& x = xs[b];
    TORCH_CHECK(x.device().is_cpu(), "facet::block_norm runs on the CPU only");
    TORCH_CHECK(x.dim() == 3 && x.size(0) == s.n && x.scalar_type() == xs[0].scalar_type(),
                "facet::block_norm: every block must be [n, d, mul] with the same n and dtype");
    TORCH_CHECK(b >= s.ns || x.size(1) == 1, "facet::block_norm: scalar block ", b,
                " must have d = 1");
    s.d.push_back(x.size(1));
    s.mul.push_back(x.size(2));
    s.gain_offset.push_back(channels);
    channels += x.size(2);
    s.dim += x.size(1) * x.size(2);
    if (b < s.ns) s.scalars += x.size(2);
  }
  s.two_groups = !joint && s.ns > 0 && s.ns < s.blocks;
  s.group_dim[0] = static_cast<double>(s.two_groups ? s.scalars : s.dim);
  s.group_dim[1] = static_cast<double>(s.dim - s.scalars);
  if (gain.has_value()) {
    TORCH_CHECK(gain->dim() == 1 && gain->size(0) == channels &&
                    gain->scalar_type() == xs[0].scalar_type() && gain->device().is_cpu(),
                "facet::block_norm: gain must be [", channels, "] (one per channel, blocks "
                "in order) of the blocks' dtype");
  }
  return s;
}

// sum of p[k] and of (p[k] - m)^2 over k < len, in double with 8 independent partial sums
// (vectorised; a single accumulator would be one serial chain of additions)
template <typename T>
double sum_of(const T* p, int64_t len) {
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= len; k += 8)
    for (int j = 0; j < 8; j++) part[j] += static_cast<double>(p[k + j]);
  for (; k < len; k++) part[0] += static_cast<double>(p[k]);
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

template <typename T>
double centred_squares(const T* p, int64_t len, T m) {
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= len; k += 8)
    for (int j = 0; j < 8; j++) {
      const double c = static_cast<double>(p[k + j] - m);
      part[j] += c * c;
    }
  for (; k < len; k++) {
    const double c = static_cast<double>(p[k] - m);
    part[0] += c * c;
  }
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// sum of a[k] * b[k] * (c[k] - m) (b optional: 1), in double as above
template <typename T>
double weighted_dot(const T* a, const T* b, const T* c, int64_t len, T m) {
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= len; k += 8)
    for (int j = 0; j < 8; j++)
      part[j] += static_cast<double>(a[k + j] * (b ? b[k + j] : T(1))) *
                 static_cast<double>(c[k + j] - m);
  for (; k < len; k++)
    part[0] += static_cast<double>(a[k] * (b ? b[k] : T(1))) * static_cast<double>(c[k] - m);
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

struct Row {
  // the row's centring mean and, per group, 1 / (rms + eps) and rms
  double mean = 0.0, inv[2] = {0.0, 0.0}, rms[2] = {0.0, 0.0};
};

// centring mean and group RMS of row r
template <typename T>
Row row_stats(const NormShape& s, const std::vector<const T*>& x, int64_t r, double eps) {
  Row st;
  if (s.ns > 0) {
    double total = 0.0;
    for (int64_t b = 0; b < s.ns; b++) total += sum_of(x[b] + r * s.mul[b], s.mul[b]);
    st.mean = total / static_cast<double>(s.scalars);
  }
  double sq[2] = {0.0, 0.0};
  for (int64_t b = 0; b < s.blocks; b++) {
    const int64_t len = s.d[b] * s.mul[b];
    const T m = b < s.ns ? static_cast<T>(st.mean) : T(0);
    sq[s.group(b)] += centred_squares(x[b] + r * len, len, m);
  }
  for (int g = 0; g < (s.two_groups ? 2 : 1); g++) {
    st.rms[g] = std::sqrt(sq[g] / s.group_dim[g] + eps);
    st.inv[g] = 1.0 / (st.rms[g] + eps);
  }
  return st;
}

template <typename T>
void forward_kernel(const NormShape& s, const std::vector<const T*>& x, const T* gain,
                    const std::vector<T*>& y, double eps) {
  at::parallel_for(0, s.n, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const Row st = row_stats<T>(s, x, r, eps);
      for (int64_t b = 0; b < s.blocks; b++) {
        const int64_t mul = s.mul[b], len = s.d[b] * mul;
        const T* xr = x[b] + r * len;
        T* yr = y[b] + r * len;
        const T m = b < s.ns ? static_cast<T>(st.mean) : T(0);
        const T inv = static_cast<T>(st.inv[s.group(b)]);
        const T* g = gain ? gain + s.gain_offset[b] : nullptr;
        for (int64_t i = 0; i < s.d[b]; i++) {
          const T* xi = xr + i * mul;
          T* yi = yr + i * mul;
          if (g) {
#pragma omp simd
            for (int64_t u = 0; u < mul; u++) yi[u] = (xi[u] - m) * inv * g[u];
          } else {
#pragma omp simd
            for (int64_t u = 0; u < mul; u++) yi[u] = (xi[u] - m) * inv;
          }
        }
      }
    }
  });
}

// gx = (gy' / (rms + eps) - c A) with gy' = gy * gain, A = sum(gy' c) / ((rms + eps)^2 D rms)
// per group; then the scalars' share of the centring: gx_s -= mean over scalars of gx_s
template <typename T>
void backward_kernel(const NormShape& s, const std::vector<const T*>& gy,
                     const std::vector<const T*>& x, const T* gain, const std::vector<T*>& gx,
                     double eps) {
  at::parallel_for(0, s.n, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const Row st = row_stats<T>(s, x, r, eps);
      double dot[2] = {0.0, 0.0};
      for (int64_t b = 0; b < s.blocks; b++) {
        const int64_t mul = s.mul[b], len = s.d[b] * mul;
        const T* xr = x[b] + r * len;
        const T* gr = gy[b] + r * len;
        const T m = b < s.ns ? static_cast<T>(st.mean) : T(0);
        const T* g = gain ? gain + s.gain_offset[b] : nullptr;
        double acc = 0.0;
        for (int64_t i = 0; i < s.d[b]; i++)
          acc += weighted_dot(gr + i * mul, g, xr + i * mul, mul, m);
        dot[s.group(b)] += acc;
      }
      double coef[2];
      for (int g = 0; g < 2; g++)
        coef[g] = dot[g] * st.inv[g] * st.inv[g] / (s.group_dim[g] * (st.rms[g] > 0 ? st.rms[g] : 1));
      double scalar_sum = 0.0;
      for (int64_t b = 0; b < s.blocks; b++) {
        const int64_t mul = s.mul[b], len = s.d[b] * mul;
        const T* xr = x[b] + r * len;
        const T* gr = gy[b] + r * len;
        T* out = gx[b] + r * len;
        const int grp = s.group(b);
        const T m = b < s.ns ? static_cast<T>(st.mean) : T(0);
        const T inv = static_cast<T>(st.inv[grp]), a = static_cast<T>(coef[grp]);
        const T* g = gain ? gain + s.gain_offset[b] : nullptr;
        for (int64_t i = 0; i < s.d[b]; i++) {
          const T* xi = xr + i * mul;
          const T* gi = gr + i * mul;
          T* oi = out + i * mul;
#pragma omp simd
          for (int64_t u = 0; u < mul; u++)
            oi[u] = gi[u] * (g ? g[u] : T(1)) * inv - (xi[u] - m) * a;
        }
        if (b < s.ns) scalar_sum += sum_of(out, mul);
      }
      if (s.ns > 0) {
        const T shift = static_cast<T>(scalar_sum / static_cast<double>(s.scalars));
        for (int64_t b = 0; b < s.ns; b++) {
          T* out = gx[b] + r * s.mul[b];
          for (int64_t u = 0; u < s.mul[b]; u++) out[u] -= shift;
        }
      }
    }
  });
}

std::vector<at::Tensor> contiguous_all(at::TensorList xs) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) out.push_back(x.contiguous());
  return out;
}

std::vector<at::Tensor> block_norm(at::TensorList xs_in, int64_t num_scalar_blocks, bool joint,
                                   double eps, const c10::optional<at::Tensor>& gain_in) {
  const NormShape s = check_inputs(xs_in, num_scalar_blocks, joint, gain_in);
  const auto xs = contiguous_all(xs_in);
  at::Tensor gain = gain_in.has_value() ? gain_in->contiguous() : at::Tensor();
  std::vector<at::Tensor> ys;
  for (const auto& x : xs) ys.push_back(at::empty_like(x));
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "block_norm", [&] {
    std::vector<const scalar_t*> xp;
    std::vector<scalar_t*> yp;
    for (size_t b = 0; b < xs.size(); b++) {
      xp.push_back(xs[b].data_ptr<scalar_t>());
      yp.push_back(ys[b].data_ptr<scalar_t>());
    }
    forward_kernel<scalar_t>(s, xp, gain.defined() ? gain.data_ptr<scalar_t>() : nullptr, yp,
                             eps);
  });
  return ys;
}

std::vector<at::Tensor> block_norm_backward(at::TensorList grads_in, at::TensorList xs_in,
                                            int64_t num_scalar_blocks, bool joint, double eps,
                                            const c10::optional<at::Tensor>& gain_in) {
  const NormShape s = check_inputs(xs_in, num_scalar_blocks, joint, gain_in);
  TORCH_CHECK(grads_in.size() == xs_in.size(), "facet::block_norm_backward: one gradient per block");
  for (size_t b = 0; b < xs_in.size(); b++)
    TORCH_CHECK(grads_in[b].sizes() == xs_in[b].sizes() &&
                    grads_in[b].scalar_type() == xs_in[b].scalar_type(),
                "facet::block_norm_backward: gradient ", b, " must match its block");
  const auto xs = contiguous_all(xs_in), gys = contiguous_all(grads_in);
  at::Tensor gain = gain_in.has_value() ? gain_in->contiguous() : at::Tensor();
  std::vector<at::Tensor> gxs;
  for (const auto& x : xs) gxs.push_back(at::empty_like(x));
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "block_norm_backward", [&] {
    std::vector<const scalar_t*> xp, gp;
    std::vector<scalar_t*> op;
    for (size_t b = 0; b < xs.size(); b++) {
      xp.push_back(xs[b].data_ptr<scalar_t>());
      gp.push_back(gys[b].data_ptr<scalar_t>());
      op.push_back(gxs[b].data_ptr<scalar_t>());
    }
    backward_kernel<scalar_t>(s, gp, xp, gain.defined() ? gain.data_ptr<scalar_t>() : nullptr,
                              op, eps);
  });
  return gxs;
}

std::vector<at::Tensor> call_forward(at::TensorList xs, int64_t ns, bool joint, double eps,
                                     const c10::optional<at::Tensor>& gain) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::block_norm", "")
                       .typed<decltype(block_norm)>();
  return op.call(xs, ns, joint, eps, gain);
}

std::vector<at::Tensor> call_backward(at::TensorList grads, at::TensorList xs, int64_t ns,
                                      bool joint, double eps,
                                      const c10::optional<at::Tensor>& gain) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::block_norm_backward", "")
                       .typed<decltype(block_norm_backward)>();
  return op.call(grads, xs, ns, joint, eps, gain);
}

class BlockNormFunction : public torch::autograd::Function<BlockNormFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                at::TensorList xs, int64_t ns, bool joint,
                                                double eps,
                                                const c10::optional<at::Tensor>& gain) {
    TORCH_CHECK(!gain.has_value() || !gain->requires_grad(),
                "facet::block_norm (the fused layer-norm kernel) is for inference: it has no "
                "gradient for the gain. Train with the fused kernels off "
                "(facet.ops.use_fused(model, False), the default of a model being trained)");
    std::vector<at::Tensor> saved(xs.begin(), xs.end());
    if (gain.has_value()) saved.push_back(*gain);
    ctx->save_for_backward(saved);
    ctx->saved_data["blocks"] = static_cast<int64_t>(xs.size());
    ctx->saved_data["ns"] = ns;
    ctx->saved_data["joint"] = joint;
    ctx->saved_data["eps"] = eps;
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(xs, ns, joint, eps, gain);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t blocks = ctx->saved_data["blocks"].toInt();
    std::vector<at::Tensor> xs(saved.begin(), saved.begin() + blocks);
    c10::optional<at::Tensor> gain;
    if (static_cast<int64_t>(saved.size()) > blocks) gain = saved[blocks];
    std::vector<at::Tensor> gys;
    for (int64_t b = 0; b < blocks; b++)
      gys.push_back(grads[b].defined() ? grads[b].contiguous() : at::zeros_like(xs[b]));
    auto gxs = call_backward(gys, xs, ctx->saved_data["ns"].toInt(),
                             ctx->saved_data["joint"].toBool(),
                             ctx->saved_data["eps"].toDouble(), gain);
    // one gradient per input of forward: the blocks (flattened by apply), ns, joint, eps, gain
    gxs.push_back(at::Tensor());
    gxs.push_back(at::Tensor());
    gxs.push_back(at::Tensor());
    gxs.push_back(at::Tensor());
    return gxs;
  }
};

std::vector<at::Tensor> block_norm_autograd(at::TensorList xs, int64_t ns, bool joint,
                                            double eps, const c10::optional<at::Tensor>& gain) {
  return BlockNormFunction::apply(xs, ns, joint, eps, gain);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(facet, m) {
  m.def("block_norm(Tensor[] xs, int num_scalar_blocks, bool joint, float eps, Tensor? gain) "
        "-> Tensor[]");
  m.def("block_norm_backward(Tensor[] grads, Tensor[] xs, int num_scalar_blocks, bool joint, "
        "float eps, Tensor? gain) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(facet, CPU, m) {
  m.impl("block_norm", &block_norm);
  m.impl("block_norm_backward", &block_norm_backward);
}

TORCH_LIBRARY_IMPL(facet, Autograd, m) {
  m.impl("block_norm", &block_norm_autograd);
  m.impl("block_norm_backward", torch::autograd::autogradNotImplementedFallback());
}
