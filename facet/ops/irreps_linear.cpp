// Fused CPU kernel of Facet's equivariant linear maps (facet/linear.py, IrrepsLinear) on irrep
// blocks, for inference: one or several maps, summed, in one call.
//
// Inputs: tensors xs[t], each [n, D_t, mul_t] (component-major), any strides. A path p = (t, c0, o, w, off) reads the
// components c0 .. c0 + d_o of xs[t] as a matrix X_p [n * d_o, mul_t] and adds
//
//   out[o] += alpha_p * X_p @ W_p (@ right)          W_p = weights[w][off : off + mul_t * m_o]
//
// (W_p row-major [mul_t, m_o]) to output o, [n, d_o, m_o] (or [n, d_o, right.size(1)] with
// ``right``, a channel map after every output: an MLP's first layer). Outputs no path reaches
// are zero. So one call evaluates a map whose input irrep is several tensors side by side
// (a concatenation, as consecutive row ranges of its weight), reads the components of one
// irrep out of a wider tensor (no split), scales each path (e3nn's path normalisation, a
// message normalisation) and sums two maps (a layer's message map and its residual adapter):
// what took ~8 ATen calls per output irrep and as many autograd nodes. Consecutive paths into
// one output with consecutive rows of one weight and one alpha (e3nn's layout) are one gemm
// over their inputs side by side. The weights are constants (inference): the backward
// returns the inputs' gradients only,
//
//   g_xs[t][components c0 .. c0 + d_o] += alpha_p * g_out[o] @ (W_p @ right)^T.
//
// Registered as facet::irreps_linear and facet::irreps_linear_backward; built with the other
// fused kernels by facet/ops and compiled into the LAMMPS plugin (CMakeLists.txt).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "blas.h"

namespace {

using facet_blas::gemm;

constexpr int64_t kPathInts = 5;  // t, c0, o, w, off

struct Path {
  int64_t t, c0, o, w, off;
};

struct InputShape {
  int64_t comps, mul;   // D_t, mul_t
};

// Consecutive paths into one output whose weights are consecutive rows of one weight tensor,
// with one alpha (e3nn's layout: an output irrep's paths from sorted inputs): one gemm over
// their inputs side by side (K = the sum of their channels) instead of one per path
struct Group {
  size_t first = 0, last = 0;  // paths first .. last - 1
  int64_t o = 0, w = 0, off = 0, K = 0;
  double alpha = 1;
};

struct LinearPlan {
  int64_t n = 0;
  std::vector<InputShape> in;
  std::vector<int64_t> d, m;  // per output: components, weight columns
  int64_t right_cols = -1;    // columns of ``right``, -1 without
  std::vector<Path> paths;
  std::vector<double> alphas;
  std::vector<Group> groups;  // the paths with channels, grouped
  int64_t cols(int64_t o) const { return right_cols >= 0 ? right_cols : m[o]; }
};

// The plan of a call, every index and size checked (a wrong plan is a message, not a read
// outside a tensor). ``in`` from the inputs' sizes: [n, a, b] per input, flattened.
LinearPlan check_plan(int64_t n, at::IntArrayRef in_sizes, at::TensorList weights, at::IntArrayRef paths, at::ArrayRef<double> alphas,
                      at::IntArrayRef out_shapes, const c10::optional<at::Tensor>& right,
                      at::ScalarType dtype) {
  LinearPlan plan;
  plan.n = n;
  for (size_t t = 0; t < in_sizes.size() / 3; t++) {
    TORCH_CHECK(in_sizes[3 * t] == n, "facet::irreps_linear: input ", t, " has ",
                in_sizes[3 * t], " rows, input 0 has ", n);
    plan.in.push_back({in_sizes[3 * t + 1], in_sizes[3 * t + 2]});
  }
  TORCH_CHECK(out_shapes.size() % 2 == 0 && !out_shapes.empty(),
              "facet::irreps_linear: out_shapes must list (d, mul) per output");
  for (size_t o = 0; o < out_shapes.size() / 2; o++) {
    plan.d.push_back(out_shapes[2 * o]);
    plan.m.push_back(out_shapes[2 * o + 1]);
  }
  for (const auto& w : weights) {
    TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == dtype && w.is_contiguous(),
                "facet::irreps_linear: weights must be contiguous CPU tensors of the inputs' "
                "dtype");
  }
  if (right.has_value()) {
    const auto& r = *right;
    TORCH_CHECK(r.device().is_cpu() && r.dim() == 2 && r.scalar_type() == dtype &&
                    r.is_contiguous(),
                "facet::irreps_linear: right must be a contiguous [mul_out, m] CPU matrix of "
                "the inputs' dtype");
    for (int64_t mo : plan.m)
      TORCH_CHECK(mo == r.size(0), "facet::irreps_linear: right has ", r.size(0),
                  " rows, an output has ", mo, " channels");
    plan.right_cols = r.size(1);
  }
  TORCH_CHECK(paths.size() % kPathInts == 0 && paths.size() / kPathInts == alphas.size(),
              "facet::irreps_linear: paths must list (t, c0, o, w, off) per path, one alpha each");
  for (size_t p = 0; p < alphas.size(); p++) {
    const Path q{paths[kPathInts * p], paths[kPathInts * p + 1], paths[kPathInts * p + 2],
                 paths[kPathInts * p + 3], paths[kPathInts * p + 4]};
    TORCH_CHECK(q.t >= 0 && q.t < static_cast<int64_t>(plan.in.size()) && q.o >= 0 &&
                    q.o < static_cast<int64_t>(plan.d.size()) && q.w >= 0 &&
                    q.w < static_cast<int64_t>(weights.size()),
                "facet::irreps_linear: path ", p, " names an input, output or weight that is "
                "not there");
    const auto& in = plan.in[q.t];
    TORCH_CHECK(q.c0 >= 0 && q.c0 + plan.d[q.o] <= in.comps, "facet::irreps_linear: path ", p,
                " reads components ", q.c0, "..", q.c0 + plan.d[q.o], " of an input with ",
                in.comps);
    TORCH_CHECK(q.off >= 0 && q.off + in.mul * plan.m[q.o] <= weights[q.w].numel(),
                "facet::irreps_linear: path ", p, " reads past the end of weight ", q.w);
    plan.paths.push_back(q);
    plan.alphas.push_back(alphas[p]);
    const int64_t mul = in.mul;
    if (mul == 0) continue;
    Group* g = plan.groups.empty() ? nullptr : &plan.groups.back();
    if (g && g->last == p && g->o == q.o && g->w == q.w && g->alpha == alphas[p] &&
        q.off == g->off + g->K * plan.m[q.o]) {
      g->last = p + 1;
      g->K += mul;
    } else {
      plan.groups.push_back({p, p + 1, q.o, q.w, q.off, mul, alphas[p]});
    }
  }
  return plan;
}

// A group's weight as applied: W [K, m] (rows of its weight tensor), or alpha W @ right
// [K, right_cols] in buf
template <typename T>
const T* group_weight(const LinearPlan& s, const Group& g, const std::vector<const T*>& ws,
                      const T* right, std::vector<T>& buf, int64_t* ld) {
  const T* w = ws[g.w] + g.off;
  const int64_t m = s.m[g.o];
  if (right) {
    buf.resize(g.K * s.right_cols);
    gemm<T>(false, false, g.K, s.right_cols, m, w, m, right, s.right_cols, buf.data(),
            s.right_cols, static_cast<T>(g.alpha));
    *ld = s.right_cols;
    return buf.data();
  }
  *ld = m;
  return w;
}

// Components c0 .. c0 + d of input x as rows [n * d, mul] of dst (row stride ld)
template <typename T>
void gather_piece(const at::Tensor& x, const InputShape& in, int64_t n, int64_t c0, int64_t d,
                  T* dst, int64_t ld) {
  const T* base = x.data_ptr<T>();
  const int64_t sc = x.stride(1), su = x.stride(2);
  for (int64_t a = 0; a < n; a++)
    for (int64_t c = 0; c < d; c++) {
      const T* src = base + a * x.stride(0) + (c0 + c) * sc;
      T* row = dst + (a * d + c) * ld;
      if (su == 1) {
        std::copy(src, src + in.mul, row);
      } else {
        for (int64_t u = 0; u < in.mul; u++) row[u] = src[u * su];
      }
    }
}

// Rows [n * d, mul] of src (row stride ld) added to components c0 .. c0 + d of gx, a
// contiguous gradient [n, D, mul]
template <typename T>
void scatter_add_piece(const T* src, int64_t ld, const InputShape& in, int64_t n, int64_t c0,
                       int64_t d, T* gx) {
  for (int64_t a = 0; a < n; a++)
    for (int64_t c = 0; c < d; c++) {
      const T* row = src + (a * d + c) * ld;
      T* dst = gx + (a * in.comps + c0 + c) * in.mul;
      for (int64_t u = 0; u < in.mul; u++) dst[u] += row[u];
    }
}

// A group's inputs as a matrix [n * d, K]: a single path's input in place where its rows are
// evenly strided (components c0.. of all rows equally spaced), else the
// paths' inputs side by side in buf
template <typename T>
const T* group_input(const LinearPlan& s, const Group& g, const std::vector<at::Tensor>& xs,
                     std::vector<T>& buf, int64_t* ld) {
  const int64_t d = s.d[g.o];
  if (g.last - g.first == 1) {
    const Path& q = s.paths[g.first];
    const auto& x = xs[q.t];
    const InputShape& in = s.in[q.t];
    const int64_t s0 = x.stride(0);
    if (x.stride(2) == 1 && x.stride(1) >= in.mul && s0 >= d * in.mul &&
        (d == 1 || s0 == d * x.stride(1))) {
      *ld = d == 1 ? s0 : x.stride(1);
      return x.data_ptr<T>() + q.c0 * x.stride(1);
    }
  }
  buf.resize(s.n * d * g.K);
  int64_t col = 0;
  for (size_t p = g.first; p < g.last; p++) {
    const Path& q = s.paths[p];
    gather_piece<T>(xs[q.t], s.in[q.t], s.n, q.c0, d, buf.data() + col, g.K);
    col += s.in[q.t].mul;
  }
  *ld = g.K;
  return buf.data();
}

template <typename T>
void forward_kernel(const LinearPlan& s, const std::vector<at::Tensor>& xs,
                    const std::vector<const T*>& ws, const T* right, std::vector<at::Tensor>& out) {
  std::vector<bool> written(out.size(), false);
  std::vector<T> xbuf, wbuf;
  for (const Group& g : s.groups) {
    int64_t ldx = 0, ldw = 0;
    const T* x = group_input<T>(s, g, xs, xbuf, &ldx);
    const T* w = group_weight<T>(s, g, ws, right, wbuf, &ldw);
    const T alpha = right ? T(1) : static_cast<T>(g.alpha);
    const int64_t cols = s.cols(g.o);
    gemm<T>(false, false, s.n * s.d[g.o], cols, g.K, x, ldx, w, ldw, out[g.o].data_ptr<T>(),
            cols, alpha, written[g.o] ? T(1) : T(0));
    written[g.o] = true;
  }
  for (size_t o = 0; o < out.size(); o++)
    if (!written[o]) out[o].zero_();
}

template <typename T>
void backward_kernel(const LinearPlan& s, const std::vector<at::Tensor>& grads,
                     const std::vector<const T*>& ws, const T* right,
                     std::vector<at::Tensor>& gxs) {
  if (s.n == 0) return;
  std::vector<T> gbuf, wbuf;
  for (const Group& g : s.groups) {
    const int64_t d = s.d[g.o], cols = s.cols(g.o);
    int64_t ldw = 0;
    const T* w = group_weight<T>(s, g, ws, right, wbuf, &ldw);
    const T alpha = right ? T(1) : static_cast<T>(g.alpha);
    const T* gy = grads[g.o].data_ptr<T>();
    const Path& first = s.paths[g.first];
    const InputShape& in = s.in[first.t];
    if (g.last - g.first == 1 && (d == in.comps || d == 1)) {
      // one input whose gradient rows for these components are evenly strided: add in place
      const int64_t ld = d == 1 ? in.comps * in.mul : in.mul;
      gemm<T>(false, true, s.n * d, in.mul, cols, gy, cols, w, ldw,
              gxs[first.t].data_ptr<T>() + first.c0 * in.mul, ld, alpha, T(1));
      continue;
    }
    // the gradient for the group's inputs side by side, then into each input's gradient
    gbuf.resize(s.n * d * g.K);
    gemm<T>(false, true, s.n * d, g.K, cols, gy, cols, w, ldw, gbuf.data(), g.K, alpha);
    int64_t col = 0;
    for (size_t p = g.first; p < g.last; p++) {
      const Path& q = s.paths[p];
      scatter_add_piece<T>(gbuf.data() + col, g.K, s.in[q.t], s.n, q.c0, d,
                           gxs[q.t].data_ptr<T>());
      col += s.in[q.t].mul;
    }
  }
}

std::vector<int64_t> input_sizes(at::TensorList xs) {
  std::vector<int64_t> sizes;
  for (const auto& x : xs) {
    TORCH_CHECK(x.dim() == 3, "facet::irreps_linear: every input must be [n, a, b]");
    sizes.insert(sizes.end(), x.sizes().begin(), x.sizes().end());
  }
  return sizes;
}

std::vector<at::Tensor> irreps_linear(at::TensorList xs, at::TensorList weights, at::IntArrayRef paths,
                                      at::ArrayRef<double> alphas, at::IntArrayRef out_shapes,
                                      const c10::optional<at::Tensor>& right) {
  TORCH_CHECK(!xs.empty(), "facet::irreps_linear: no inputs");
  const auto dtype = xs[0].scalar_type();
  for (const auto& x : xs)
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == dtype,
                "facet::irreps_linear runs on the CPU, every input of one dtype");
  const auto sizes = input_sizes(xs);
  const LinearPlan s = check_plan(xs[0].size(0), sizes, weights, paths, alphas, out_shapes,
                                  right, dtype);
  std::vector<at::Tensor> out;
  for (size_t o = 0; o < s.d.size(); o++)
    out.push_back(at::empty({s.n, s.d[o], s.cols(o)}, xs[0].options()));
  std::vector<at::Tensor> in(xs.begin(), xs.end());
  AT_DISPATCH_FLOATING_TYPES(dtype, "irreps_linear", [&] {
    std::vector<const scalar_t*> ws;
    for (const auto& w : weights) ws.push_back(w.data_ptr<scalar_t>());
    forward_kernel<scalar_t>(s, in, ws, right.has_value() ? right->data_ptr<scalar_t>() : nullptr,
                             out);
  });
  return out;
}

// ``inputs``: the forward's inputs, or tensors of their sizes (only the sizes are read)
std::vector<at::Tensor> irreps_linear_backward(at::TensorList grads_in, at::TensorList inputs,
                                               at::TensorList weights,
                                               at::IntArrayRef paths, at::ArrayRef<double> alphas,
                                               at::IntArrayRef out_shapes,
                                               const c10::optional<at::Tensor>& right) {
  TORCH_CHECK(!grads_in.empty() && !inputs.empty(), "facet::irreps_linear_backward: no gradients "
              "or inputs");
  const auto dtype = grads_in[0].scalar_type();
  const auto in_sizes = input_sizes(inputs);
  const int64_t n = in_sizes[0];
  const LinearPlan s = check_plan(n, in_sizes, weights, paths, alphas, out_shapes, right,
                                  dtype);
  TORCH_CHECK(grads_in.size() == s.d.size(), "facet::irreps_linear_backward: one gradient per "
              "output");
  std::vector<at::Tensor> grads;
  for (size_t o = 0; o < s.d.size(); o++) {
    const auto& g = grads_in[o];
    TORCH_CHECK(g.device().is_cpu() && g.scalar_type() == dtype && g.dim() == 3 &&
                    g.size(0) == n && g.size(1) == s.d[o] && g.size(2) == s.cols(o),
                "facet::irreps_linear_backward: gradient ", o, " must be [n, d, cols] of the "
                "output's shape");
    grads.push_back(g.contiguous());
  }
  std::vector<at::Tensor> gxs;
  for (size_t t = 0; t < s.in.size(); t++)
    gxs.push_back(at::zeros({in_sizes[3 * t], in_sizes[3 * t + 1], in_sizes[3 * t + 2]},
                            grads[0].options()));
  AT_DISPATCH_FLOATING_TYPES(dtype, "irreps_linear_backward", [&] {
    std::vector<const scalar_t*> ws;
    for (const auto& w : weights) ws.push_back(w.data_ptr<scalar_t>());
    backward_kernel<scalar_t>(s, grads, ws,
                              right.has_value() ? right->data_ptr<scalar_t>() : nullptr, gxs);
  });
  return gxs;
}

using ForwardFn = decltype(irreps_linear);
using BackwardFn = decltype(irreps_linear_backward);

std::vector<at::Tensor> call_forward(at::TensorList xs, at::TensorList weights, at::IntArrayRef paths,
                                     at::ArrayRef<double> alphas, at::IntArrayRef out_shapes,
                                     const c10::optional<at::Tensor>& right) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::irreps_linear", "")
                       .typed<ForwardFn>();
  return op.call(xs, weights, paths, alphas, out_shapes, right);
}

std::vector<at::Tensor> call_backward(at::TensorList grads, at::TensorList inputs,
                                      at::TensorList weights,
                                      at::IntArrayRef paths, at::ArrayRef<double> alphas,
                                      at::IntArrayRef out_shapes,
                                      const c10::optional<at::Tensor>& right) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::irreps_linear_backward", "")
                       .typed<BackwardFn>();
  return op.call(grads, inputs, weights, paths, alphas, out_shapes, right);
}

class IrrepsLinearFunction : public torch::autograd::Function<IrrepsLinearFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, at::TensorList xs, at::TensorList weights, at::IntArrayRef paths, at::ArrayRef<double> alphas,
      at::IntArrayRef out_shapes, const c10::optional<at::Tensor>& right) {
    bool weights_need_grad = right.has_value() && right->requires_grad();
    for (const auto& w : weights) weights_need_grad = weights_need_grad || w.requires_grad();
    TORCH_CHECK(!weights_need_grad,
                "facet::irreps_linear (the fused linear-map kernel) is for inference: it has "
                "no gradient for the weights. Train with the fused kernels off "
                "(facet.ops.use_fused(model, False), the default of a model being trained)");
    // the gradient does not depend on the inputs' values: keep their sizes, not them (as
    // tensors of no memory, stride 0: symbolic sizes stay symbolic when torch.export traces)
    std::vector<at::Tensor> saved(weights.begin(), weights.end());
    if (right.has_value()) saved.push_back(*right);
    for (const auto& x : xs)
      saved.push_back(at::zeros({}, x.options()).expand_symint(x.sym_sizes()));
    ctx->save_for_backward(saved);
    ctx->saved_data["weights"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["right"] = right.has_value();
    ctx->saved_data["paths"] = paths.vec();
    ctx->saved_data["alphas"] = std::vector<double>(alphas.begin(), alphas.end());
    ctx->saved_data["out_shapes"] = out_shapes.vec();
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(xs, weights, paths, alphas, out_shapes, right);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t nw = ctx->saved_data["weights"].toInt();
    std::vector<at::Tensor> weights(saved.begin(), saved.begin() + nw);
    c10::optional<at::Tensor> right;
    int64_t first_shape = nw;
    if (ctx->saved_data["right"].toBool()) right = saved[first_shape++];
    std::vector<at::Tensor> shapes(saved.begin() + first_shape, saved.end());
    const auto out_shapes = ctx->saved_data["out_shapes"].toIntVector();
    std::vector<at::Tensor> gys;
    for (size_t o = 0; o < grads.size(); o++) {
      if (grads[o].defined()) {
        gys.push_back(grads[o].contiguous());
      } else {
        const int64_t cols = right.has_value() ? right->size(1) : out_shapes[2 * o + 1];
        gys.push_back(at::zeros_symint({shapes[0].sym_size(0), out_shapes[2 * o], cols},
                                       weights[0].options()));
      }
    }
    auto gxs = call_backward(gys, shapes, weights, ctx->saved_data["paths"].toIntVector(),
                             ctx->saved_data["alphas"].toDoubleVector(), out_shapes, right);
    // one gradient per input of forward: the inputs (flattened by apply), the weights
    // (flattened), paths, alphas, out_shapes, right
    for (int64_t w = 0; w < nw; w++) gxs.push_back(at::Tensor());
    for (int i = 0; i < 4; i++) gxs.push_back(at::Tensor());
    return gxs;
  }
};

std::vector<at::Tensor> irreps_linear_autograd(at::TensorList xs, at::TensorList weights,
                                               at::IntArrayRef paths,
                                               at::ArrayRef<double> alphas,
                                               at::IntArrayRef out_shapes,
                                               const c10::optional<at::Tensor>& right) {
  return IrrepsLinearFunction::apply(xs, weights, paths, alphas, out_shapes, right);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(facet, m) {
  m.def("irreps_linear(Tensor[] xs, Tensor[] weights, int[] paths, float[] alphas, "
        "int[] out_shapes, Tensor? right) -> Tensor[]");
  m.def("irreps_linear_backward(Tensor[] grads, Tensor[] inputs, Tensor[] weights, int[] paths, "
        "float[] alphas, int[] out_shapes, Tensor? right) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(facet, CPU, m) {
  m.impl("irreps_linear", &irreps_linear);
  m.impl("irreps_linear_backward", &irreps_linear_backward);
}

TORCH_LIBRARY_IMPL(facet, Autograd, m) {
  m.impl("irreps_linear", &irreps_linear_autograd);
  m.impl("irreps_linear_backward", torch::autograd::autogradNotImplementedFallback());
}
