// Fused CPU kernels of Facet's spherical-grid MLP (facet/s2.py, S2Mixing), for inference.
//
// For every atom a, from the first MLP layer's pre-activation coefficients z[a] ([dim, H],
// H = heads * hidden: the coefficients times the first weight, per head; dim = (lmax+1)^2):
//
//   P  = to_grid^T z[a]            [G, H]          (G grid points; to_grid [dim, G])
//   A1 = silu(P)                   [G, heads, hidden]
//   Q  = A1 w2   (per head)        [G, heads, uh]  (w2 [hidden, uh], shared by the heads)
//   A2 = silu(Q)                   [G, u]          (u = heads * uh)
//   out[a] = from_grid^T A2        [dim, u]        (from_grid [G, dim])
//
// one atom at a time in cache: the grid-sized activations (G x (H + u) values per atom, 41k
// for Facet-S) never go to memory, and the backward kernel recomputes them instead of keeping
// them. The backward returns the gradient for z only (the weights and grid matrices are
// constants: inference). Registered as facet::s2_mlp and facet::s2_mlp_backward (see
// uvu_tp.cpp for how the library is built and loaded).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <vector>

// Fortran BLAS of the libtorch this links (MKL in x86 wheels); weak: a libtorch without them
// falls back to at::mm
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
}

namespace {

// Row-major C [m, n] = op(A) [m, k] @ op(B) [k, n] (beta = 0); lda, ldb, ldc row strides.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
          const T* b, int64_t ldb, T* c, int64_t ldc) {
  // column-major view: C^T [n, m] = op(B)^T [n, k] @ op(A)^T [k, m]
  const char na = tb ? 'T' : 'N', nb = ta ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LA = static_cast<int>(ldb), LB = static_cast<int>(lda), LC = static_cast<int>(ldc);
  const T one = 1, zero = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) {
      sgemm_(&na, &nb, &M, &N, &K, &one, b, &LA, a, &LB, &zero, c, &LC);
      return;
    }
  } else {
    if (dgemm_) {
      dgemm_(&na, &nb, &M, &N, &K, &one, b, &LA, a, &LB, &zero, c, &LC);
      return;
    }
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto A = at::from_blob(const_cast<T*>(a), {ta ? k : m, ta ? m : k}, {lda, 1}, opts);
  auto B = at::from_blob(const_cast<T*>(b), {tb ? n : k, tb ? k : n}, {ldb, 1}, opts);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  at::mm_out(C, ta ? A.t() : A, tb ? B.t() : B);
}

#if defined(CPU_CAPABILITY_AVX512)
// exp(x) for |x| <= 87 (float) / 708 (double), inlined: 2^n exp(r) with n = round(x log2 e),
// r = x - n ln 2 (Cody-Waite, |r| <= ln2 / 2) and the Taylor polynomial of exp(r) to degree 7
// (float, truncation 5e-9 relative) / 13 (double, 4e-18), scaled by vscalef. About 2x faster
// than Sleef's call here, within 1-2 ulp of it.
inline __m512 exp_bounded(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

inline __m512d exp_bounded(__m512d x) {
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634074)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93145751953125e-1), x);
  r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.42860682030941723212e-6), r);
  double f = 1;
  for (int k = 2; k <= 13; ++k) f *= k;  // 13!
  __m512d p = _mm512_set1_pd(1.0 / f);
  for (int k = 13; k >= 2; --k) {
    f /= k;  // (k-1)!
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / f));
  }
  return _mm512_scalef_pd(_mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0)), n);
}
#endif

// 1 / (1 + exp(-x)) for a vector. With AVX-512: -x clamped to +-87 (float) / +-708 (double),
// where the sigmoid is 1 or below 1e-37 / 1e-307 (exp(-x) stays finite), the exp above and
// the reciprocal from rcp14 refined by Newton steps (float: one, double: two; ~1 ulp), about
// 3x cheaper than a vector division. Otherwise at::vec's exp and a division.
template <typename T>
inline at::vec::Vectorized<T> sigmoid_vec(const at::vec::Vectorized<T>& v) {
  using Vec = at::vec::Vectorized<T>;
  const Vec one(T(1));
#if defined(CPU_CAPABILITY_AVX512)
  constexpr T bound = std::is_same_v<T, float> ? T(87) : T(708);
  const Vec nx = at::vec::clamp(v.neg(), Vec(-bound), Vec(bound));
  const Vec d = one + Vec(exp_bounded(nx));
  Vec r;
  if constexpr (std::is_same_v<T, float>) r = Vec(_mm512_rcp14_ps(d));
  else r = Vec(_mm512_rcp14_pd(d));
  r = at::vec::fmadd(r, at::vec::fnmadd(d, r, one), r);
  if constexpr (std::is_same_v<T, double>) r = at::vec::fmadd(r, at::vec::fnmadd(d, r, one), r);
  return r;
#else
  return one / (one + v.neg().exp());
#endif
}

template <typename T>
inline T sigmoid_scalar(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// x <- silu(x)
template <typename T>
void silu_inplace(T* x, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec v = Vec::loadu(x + i);
    (v * sigmoid_vec(v)).store(x + i);
  }
  for (; i < n; ++i) x[i] = x[i] * sigmoid_scalar(x[i]);
}

// s <- sigmoid(x); y <- x s (silu), x kept
template <typename T>
void sigmoid_silu(const T* x, T* s, T* y, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec v = Vec::loadu(x + i);
    const Vec sv = sigmoid_vec(v);
    sv.store(s + i);
    if (y) (v * sv).store(y + i);
  }
  for (; i < n; ++i) {
    s[i] = sigmoid_scalar(x[i]);
    if (y) y[i] = x[i] * s[i];
  }
}

// g <- g * silu'(x), silu'(x) = s (1 + x (1 - s)), s = sigmoid(x) given
template <typename T>
void times_silu_grad(T* g, const T* x, const T* s, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  const Vec one(T(1));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec v = Vec::loadu(x + i), sv = Vec::loadu(s + i);
    (Vec::loadu(g + i) * (sv * (one + v * (one - sv)))).store(g + i);
  }
  for (; i < n; ++i) g[i] *= s[i] * (T(1) + x[i] * (T(1) - s[i]));
}

struct S2Shape {
  int64_t n, dim, G, H, heads, hidden, uh, u;
};

S2Shape check_inputs(const at::Tensor& z, const at::Tensor& to_grid, const at::Tensor& w2,
                     const at::Tensor& from_grid, int64_t heads) {
  TORCH_CHECK(z.device().is_cpu(), "facet::s2_mlp runs on the CPU only");
  TORCH_CHECK(z.dim() == 3 && to_grid.dim() == 2 && w2.dim() == 2 && from_grid.dim() == 2,
              "facet::s2_mlp: expected z [n,dim,H], to_grid [dim,G], w2 [hidden,uh], "
              "from_grid [G,dim]");
  TORCH_CHECK(heads > 0 && z.size(2) % heads == 0, "facet::s2_mlp: H not divisible by heads");
  S2Shape s{z.size(0), z.size(1), to_grid.size(1), z.size(2), heads, z.size(2) / heads,
            w2.size(1), heads * w2.size(1)};
  TORCH_CHECK(to_grid.size(0) == s.dim && from_grid.size(0) == s.G &&
                  from_grid.size(1) == s.dim && w2.size(0) == s.hidden,
              "facet::s2_mlp: inconsistent shapes");
  TORCH_CHECK(to_grid.scalar_type() == z.scalar_type() && w2.scalar_type() == z.scalar_type() &&
                  from_grid.scalar_type() == z.scalar_type(),
              "facet::s2_mlp: all inputs must have one dtype");
  return s;
}

template <typename T>
void forward_kernel(const S2Shape& s, const T* z, const T* tg, const T* w2, const T* fg, T* out) {
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> a1(s.G * s.H), a2(s.G * s.u);
    for (int64_t a = begin; a < end; ++a) {
      gemm<T>(true, false, s.G, s.H, s.dim, tg, s.G, z + a * s.dim * s.H, s.H, a1.data(), s.H);
      silu_inplace(a1.data(), s.G * s.H);
      gemm<T>(false, false, s.G * s.heads, s.uh, s.hidden, a1.data(), s.hidden, w2, s.uh,
              a2.data(), s.uh);
      silu_inplace(a2.data(), s.G * s.u);
      gemm<T>(true, false, s.dim, s.u, s.G, fg, s.dim, a2.data(), s.u, out + a * s.dim * s.u,
              s.u);
    }
  });
}

template <typename T>
void backward_kernel(const S2Shape& s, const T* grad, const T* z, const T* tg, const T* w2,
                     const T* fg, T* gz) {
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    // a1 holds silu(P) until Q is computed, then the gradient for A1
    std::vector<T> p(s.G * s.H), sp(s.G * s.H), a1(s.G * s.H), q(s.G * s.u), sq(s.G * s.u),
        g2(s.G * s.u);
    for (int64_t a = begin; a < end; ++a) {
      // recompute the activations, keeping the sigmoids for the SiLU derivatives
      gemm<T>(true, false, s.G, s.H, s.dim, tg, s.G, z + a * s.dim * s.H, s.H, p.data(), s.H);
      sigmoid_silu<T>(p.data(), sp.data(), a1.data(), s.G * s.H);
      gemm<T>(false, false, s.G * s.heads, s.uh, s.hidden, a1.data(), s.hidden, w2, s.uh,
              q.data(), s.uh);
      sigmoid_silu<T>(q.data(), sq.data(), nullptr, s.G * s.u);
      // d out / d A2 = from_grid grad[a], then back through the two SiLUs and w2
      gemm<T>(false, false, s.G, s.u, s.dim, fg, s.dim, grad + a * s.dim * s.u, s.u, g2.data(),
              s.u);
      times_silu_grad(g2.data(), q.data(), sq.data(), s.G * s.u);
      T* g1 = a1.data();
      gemm<T>(false, true, s.G * s.heads, s.hidden, s.uh, g2.data(), s.uh, w2, s.uh, g1,
              s.hidden);
      times_silu_grad(g1, p.data(), sp.data(), s.G * s.H);
      gemm<T>(false, false, s.dim, s.H, s.G, tg, s.G, g1, s.H, gz + a * s.dim * s.H, s.H);
    }
  });
}

at::Tensor s2_mlp(const at::Tensor& z_in, const at::Tensor& tg_in, const at::Tensor& w2_in,
                  const at::Tensor& fg_in, int64_t heads) {
  const S2Shape s = check_inputs(z_in, tg_in, w2_in, fg_in, heads);
  auto z = z_in.contiguous(), tg = tg_in.contiguous(), w2 = w2_in.contiguous();
  auto fg = fg_in.contiguous();
  auto out = at::empty({s.n, s.dim, s.u}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "s2_mlp", [&] {
    forward_kernel<scalar_t>(s, z.data_ptr<scalar_t>(), tg.data_ptr<scalar_t>(),
                             w2.data_ptr<scalar_t>(), fg.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor s2_mlp_backward(const at::Tensor& grad_in, const at::Tensor& z_in,
                           const at::Tensor& tg_in, const at::Tensor& w2_in,
                           const at::Tensor& fg_in, int64_t heads) {
  const S2Shape s = check_inputs(z_in, tg_in, w2_in, fg_in, heads);
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == s.n && grad_in.size(1) == s.dim &&
                  grad_in.size(2) == s.u && grad_in.scalar_type() == z_in.scalar_type(),
              "facet::s2_mlp_backward: grad must be [n, dim, u] of z's dtype");
  auto grad = grad_in.contiguous(), z = z_in.contiguous(), tg = tg_in.contiguous();
  auto w2 = w2_in.contiguous(), fg = fg_in.contiguous();
  auto gz = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "s2_mlp_backward", [&] {
    backward_kernel<scalar_t>(s, grad.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                              tg.data_ptr<scalar_t>(), w2.data_ptr<scalar_t>(),
                              fg.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>());
  });
  return gz;
}

at::Tensor call_forward(const at::Tensor& z, const at::Tensor& tg, const at::Tensor& w2,
                        const at::Tensor& fg, int64_t heads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::s2_mlp", "")
                       .typed<decltype(s2_mlp)>();
  return op.call(z, tg, w2, fg, heads);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& tg,
                         const at::Tensor& w2, const at::Tensor& fg, int64_t heads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::s2_mlp_backward", "")
                       .typed<decltype(s2_mlp_backward)>();
  return op.call(grad, z, tg, w2, fg, heads);
}

class S2MlpFunction : public torch::autograd::Function<S2MlpFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& z,
                            const at::Tensor& tg, const at::Tensor& w2, const at::Tensor& fg,
                            int64_t heads) {
    TORCH_CHECK(!w2.requires_grad() && !tg.requires_grad() && !fg.requires_grad(),
                "facet::s2_mlp (the fused S2-grid MLP kernel) is for inference: it has no "
                "gradient for the weights. Train with the fused kernels off "
                "(facet.ops.use_fused(model, False), the default of a model being trained)");
    ctx->save_for_backward({z, tg, w2, fg});
    ctx->saved_data["heads"] = heads;
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(z, tg, w2, fg, heads);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const int64_t heads = ctx->saved_data["heads"].toInt();
    return {call_backward(grads[0].contiguous(), s[0], s[1], s[2], s[3], heads), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor s2_mlp_autograd(const at::Tensor& z, const at::Tensor& tg, const at::Tensor& w2,
                           const at::Tensor& fg, int64_t heads) {
  return S2MlpFunction::apply(z, tg, w2, fg, heads);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(facet, m) {
  m.def("s2_mlp(Tensor z, Tensor to_grid, Tensor w2, Tensor from_grid, int heads) -> Tensor");
  m.def("s2_mlp_backward(Tensor grad, Tensor z, Tensor to_grid, Tensor w2, Tensor from_grid, "
        "int heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(facet, CPU, m) {
  m.impl("s2_mlp", &s2_mlp);
  m.impl("s2_mlp_backward", &s2_mlp_backward);
}

TORCH_LIBRARY_IMPL(facet, Autograd, m) {
  m.impl("s2_mlp", &s2_mlp_autograd);
  m.impl("s2_mlp_backward", torch::autograd::autogradNotImplementedFallback());
}
