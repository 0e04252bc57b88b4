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

#include <algorithm>
#include <vector>

#include "blas.h"

namespace {

using facet_blas::gemm;

#if defined(CPU_CAPABILITY_AVX512)
// Sigmoid 1 / (1 + exp(-x)) of a vector, inlined (about 2x faster than at::vec's Sleef exp and
// a division): exp(-x) = 2^n exp(r) with -x = n ln 2 + r (Cody-Waite, |r| <= ln2 / 2), scaled
// by vscalef; the reciprocal from rcp14 refined by Newton steps.
//
// float: x clamped below at -87 (there the sigmoid is < 2e-38 and exp(-x) would overflow; a
// large x needs no clamp: 2^n underflows to 0 and the sigmoid is 1), exp(r) from a degree-5
// minimax polynomial (relative error 7.5e-8), one Newton step: within ~2 ulp, 15 vector
// operations. A NaN x gives a finite value here; the SiLU x * sigmoid(x) stays NaN.
inline __m512 sigmoid_ps(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 rn = _mm512_fmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // rn = -r
  rn = _mm512_fmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), rn);
  // exp(r) = sum_k c_k r^k = sum_k (-1)^k c_k rn^k
  __m512 p = _mm512_set1_ps(-8.297648281e-03f);
  p = _mm512_fmadd_ps(p, rn, _mm512_set1_ps(4.191543162e-02f));
  p = _mm512_fmadd_ps(p, rn, _mm512_set1_ps(-1.666757464e-01f));
  p = _mm512_fmadd_ps(p, rn, _mm512_set1_ps(4.999889433e-01f));
  p = _mm512_fmadd_ps(p, rn, _mm512_set1_ps(-9.999997020e-01f));
  p = _mm512_fmadd_ps(p, rn, _mm512_set1_ps(1.000000119e+00f));
  const __m512 d = _mm512_add_ps(_mm512_scalef_ps(p, n), one);
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, one), r);
}

// double: -x clamped to +-708 (the sigmoid is 1 or below 1e-307 there), the Taylor
// polynomial of exp(r) to degree 13 (truncation 4e-18), two Newton steps: ~1 ulp.
inline __m512d sigmoid_pd(__m512d x) {
  const __m512d one = _mm512_set1_pd(1.0);
  const __m512d nx = _mm512_min_pd(_mm512_max_pd(_mm512_sub_pd(_mm512_setzero_pd(), x),
                                                 _mm512_set1_pd(-708.0)),
                                   _mm512_set1_pd(708.0));
  const __m512d n = _mm512_roundscale_pd(
      _mm512_mul_pd(nx, _mm512_set1_pd(1.4426950408889634074)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93145751953125e-1), nx);
  r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.42860682030941723212e-6), r);
  double f = 1;
  for (int k = 2; k <= 13; ++k) f *= k;  // 13!
  __m512d p = _mm512_set1_pd(1.0 / f);
  for (int k = 13; k >= 2; --k) {
    f /= k;  // (k-1)!
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / f));
  }
  const __m512d d = _mm512_add_pd(_mm512_scalef_pd(_mm512_fmadd_pd(p, r, one), n), one);
  __m512d q = _mm512_rcp14_pd(d);
  q = _mm512_fmadd_pd(q, _mm512_fnmadd_pd(d, q, one), q);
  return _mm512_fmadd_pd(q, _mm512_fnmadd_pd(d, q, one), q);
}
#endif

// 1 / (1 + exp(-x)) for a vector: the AVX-512 code above, otherwise at::vec's exp and a
// division.
template <typename T>
inline at::vec::Vectorized<T> sigmoid_vec(const at::vec::Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    return sigmoid_ps(v);
  } else {
    return sigmoid_pd(v);
  }
#else
  const at::vec::Vectorized<T> one(T(1));
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

// a[i] <- silu(e[i] + o[i]), a[m + i] <- silu(e[i] - o[i]) for i < m (grid values of the
// antipodal pairs from the even and odd rows' products); with p and s given, also
// p <- the pre-activations and s <- their sigmoids (the backward's recomputation)
template <typename T>
void pair_silu(const T* e, const T* o, T* a, T* p, T* s, int64_t m) {
  using Vec = at::vec::Vectorized<T>;
  int64_t i = 0;
  for (; i + Vec::size() <= m; i += Vec::size()) {
    const Vec ve = Vec::loadu(e + i), vo = Vec::loadu(o + i);
    const Vec x1 = ve + vo, x2 = ve - vo;
    const Vec s1 = sigmoid_vec(x1), s2 = sigmoid_vec(x2);
    (x1 * s1).store(a + i);
    (x2 * s2).store(a + m + i);
    if (p) {
      x1.store(p + i);
      x2.store(p + m + i);
      s1.store(s + i);
      s2.store(s + m + i);
    }
  }
  for (; i < m; ++i) {
    const T x1 = e[i] + o[i], x2 = e[i] - o[i];
    const T s1 = sigmoid_scalar(x1), s2 = sigmoid_scalar(x2);
    a[i] = x1 * s1;
    a[m + i] = x2 * s2;
    if (p) {
      p[i] = x1;
      p[m + i] = x2;
      s[i] = s1;
      s[m + i] = s2;
    }
  }
}

// sum[i] <- silu(q[i]) + silu(q[m + i]), diff[i] <- silu(q[i]) - silu(q[m + i]) for i < m
template <typename T>
void silu_pair_sums(const T* q, T* sum, T* diff, int64_t m) {
  using Vec = at::vec::Vectorized<T>;
  int64_t i = 0;
  for (; i + Vec::size() <= m; i += Vec::size()) {
    const Vec v1 = Vec::loadu(q + i), v2 = Vec::loadu(q + m + i);
    const Vec a1 = v1 * sigmoid_vec(v1), a2 = v2 * sigmoid_vec(v2);
    (a1 + a2).store(sum + i);
    (a1 - a2).store(diff + i);
  }
  for (; i < m; ++i) {
    const T a1 = q[i] * sigmoid_scalar(q[i]), a2 = q[m + i] * sigmoid_scalar(q[m + i]);
    sum[i] = a1 + a2;
    diff[i] = a1 - a2;
  }
}

// g[i] <- (e[i] + o[i]) silu'(x[i]), g[m + i] <- (e[i] - o[i]) silu'(x[m + i]) for i < m
// (the gradient at the grid's antipodal pairs from the even and odd rows' products; s the
// sigmoids of x)
template <typename T>
void pair_times_silu_grad(const T* e, const T* o, const T* x, const T* s, T* g, int64_t m) {
  using Vec = at::vec::Vectorized<T>;
  const Vec one(T(1));
  int64_t i = 0;
  for (; i + Vec::size() <= m; i += Vec::size()) {
    const Vec ve = Vec::loadu(e + i), vo = Vec::loadu(o + i);
    const Vec x1 = Vec::loadu(x + i), s1 = Vec::loadu(s + i);
    const Vec x2 = Vec::loadu(x + m + i), s2 = Vec::loadu(s + m + i);
    ((ve + vo) * (s1 * (one + x1 * (one - s1)))).store(g + i);
    ((ve - vo) * (s2 * (one + x2 * (one - s2)))).store(g + m + i);
  }
  for (; i < m; ++i) {
    g[i] = (e[i] + o[i]) * (s[i] * (T(1) + x[i] * (T(1) - s[i])));
    g[m + i] = (e[i] - o[i]) * (s[m + i] * (T(1) + x[m + i] * (T(1) - s[m + i])));
  }
}

// sum[i] <- g[i] silu'(x[i]) + g[m + i] silu'(x[m + i]), diff[i] <- the difference, for i < m
template <typename T>
void silu_grad_pair_sums(const T* g, const T* x, const T* s, T* sum, T* diff, int64_t m) {
  using Vec = at::vec::Vectorized<T>;
  const Vec one(T(1));
  int64_t i = 0;
  for (; i + Vec::size() <= m; i += Vec::size()) {
    const Vec x1 = Vec::loadu(x + i), s1 = Vec::loadu(s + i);
    const Vec x2 = Vec::loadu(x + m + i), s2 = Vec::loadu(s + m + i);
    const Vec g1 = Vec::loadu(g + i) * (s1 * (one + x1 * (one - s1)));
    const Vec g2 = Vec::loadu(g + m + i) * (s2 * (one + x2 * (one - s2)));
    (g1 + g2).store(sum + i);
    (g1 - g2).store(diff + i);
  }
  for (; i < m; ++i) {
    const T g1 = g[i] * (s[i] * (T(1) + x[i] * (T(1) - s[i])));
    const T g2 = g[m + i] * (s[m + i] * (T(1) + x[m + i] * (T(1) - s[m + i])));
    sum[i] = g1 + g2;
    diff[i] = g1 - g2;
  }
}

// ---- Register-blocked kernels of the antipodal layout's grid MLP ----
// A "pair row" is one head of one antipodal pair of grid points: both points' first-layer
// inputs come from the same half-grid rows E and O (E + O and E - O), their outputs go to the
// same rows of the projection's sums and differences. Pair rows are consecutive in every
// array ([G/2, heads, width]), so a kernel call takes PR of them from one pointer. The MLP of
// the 2 PR points runs in registers: the first SiLU, the hidden x uh product (w2 rows from L1,
// the hidden activations broadcast from a small stack buffer), the second SiLU and the pair
// sums, with no pass over a grid-sized array. NH, NU: the hidden and uh widths in vectors.

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> silu_vec(const Vec<T>& x) {
  return x * sigmoid_vec(x);
}

// silu'(x) from x and s = sigmoid(x)
template <typename T>
inline Vec<T> silu_grad_vec(const Vec<T>& x, const Vec<T>& s) {
  const Vec<T> one(T(1));
  return s * (one + x * (one - s));
}

// Forward of PR pair rows: e, o [PR, hidden] -> sum, diff [PR, uh] (silu(q) of the point and of
// its antipode, added and subtracted), q = silu(e +- o) w2.
template <typename T, int NH, int NU, int PR>
void pair_rows_forward(const T* e, const T* o, const T* w2, T* sum, T* diff) {
  constexpr int V = Vec<T>::size(), H = NH * V, U = NU * V;
  alignas(64) T a[2 * PR][H];
  for (int r = 0; r < PR; ++r) {
    for (int j = 0; j < NH; ++j) {
      const Vec<T> ve = Vec<T>::loadu(e + r * H + j * V), vo = Vec<T>::loadu(o + r * H + j * V);
      silu_vec(ve + vo).store(a[2 * r] + j * V);
      silu_vec(ve - vo).store(a[2 * r + 1] + j * V);
    }
  }
  Vec<T> acc[2 * PR][NU];
  for (int q = 0; q < 2 * PR; ++q)
    for (int j = 0; j < NU; ++j) acc[q][j] = Vec<T>(T(0));
  for (int k = 0; k < H; ++k) {
    Vec<T> w[NU];
    for (int j = 0; j < NU; ++j) w[j] = Vec<T>::loadu(w2 + k * U + j * V);
    for (int q = 0; q < 2 * PR; ++q) {
      const Vec<T> b(a[q][k]);
      for (int j = 0; j < NU; ++j) acc[q][j] = at::vec::fmadd(b, w[j], acc[q][j]);
    }
  }
  for (int r = 0; r < PR; ++r) {
    for (int j = 0; j < NU; ++j) {
      const Vec<T> s1 = silu_vec(acc[2 * r][j]), s2 = silu_vec(acc[2 * r + 1][j]);
      (s1 + s2).store(sum + r * U + j * V);
      (s1 - s2).store(diff + r * U + j * V);
    }
  }
}

// Backward of PR pair rows: from the forward's inputs e, o [PR, hidden] and the gradient at
// the grid from the projection's even and odd rows ge, go [PR, uh] (the point's gradient is
// ge + go, the antipode's ge - go) to the sums and differences of the pair's gradients for
// the first layer's pre-activations, sum, diff [PR, hidden]; w2t = w2^T [uh, hidden].
template <typename T, int NH, int NU, int PR>
void pair_rows_backward(const T* e, const T* o, const T* ge, const T* go, const T* w2,
                        const T* w2t, T* sum, T* diff) {
  constexpr int V = Vec<T>::size(), H = NH * V, U = NU * V;
  alignas(64) T a[2 * PR][H];
  alignas(64) T g2[2 * PR][U];
  Vec<T> x[2 * PR][NH], sx[2 * PR][NH];
  for (int r = 0; r < PR; ++r) {
    for (int j = 0; j < NH; ++j) {
      const Vec<T> ve = Vec<T>::loadu(e + r * H + j * V), vo = Vec<T>::loadu(o + r * H + j * V);
      x[2 * r][j] = ve + vo;
      x[2 * r + 1][j] = ve - vo;
    }
  }
  for (int q = 0; q < 2 * PR; ++q) {
    for (int j = 0; j < NH; ++j) {
      sx[q][j] = sigmoid_vec(x[q][j]);
      (x[q][j] * sx[q][j]).store(a[q] + j * V);
    }
  }
  Vec<T> acc[2 * PR][NU];
  for (int q = 0; q < 2 * PR; ++q)
    for (int j = 0; j < NU; ++j) acc[q][j] = Vec<T>(T(0));
  for (int k = 0; k < H; ++k) {
    Vec<T> w[NU];
    for (int j = 0; j < NU; ++j) w[j] = Vec<T>::loadu(w2 + k * U + j * V);
    for (int q = 0; q < 2 * PR; ++q) {
      const Vec<T> b(a[q][k]);
      for (int j = 0; j < NU; ++j) acc[q][j] = at::vec::fmadd(b, w[j], acc[q][j]);
    }
  }
  // gradient at the second layer's pre-activations
  for (int r = 0; r < PR; ++r) {
    for (int j = 0; j < NU; ++j) {
      const Vec<T> vg = Vec<T>::loadu(ge + r * U + j * V), vd = Vec<T>::loadu(go + r * U + j * V);
      const Vec<T> q1 = acc[2 * r][j], q2 = acc[2 * r + 1][j];
      ((vg + vd) * silu_grad_vec(q1, sigmoid_vec(q1))).store(g2[2 * r] + j * V);
      ((vg - vd) * silu_grad_vec(q2, sigmoid_vec(q2))).store(g2[2 * r + 1] + j * V);
    }
  }
  // ... through w2: g1 = g2 w2^T, one w2^T row per step
  Vec<T> g1[2 * PR][NH];
  for (int q = 0; q < 2 * PR; ++q)
    for (int j = 0; j < NH; ++j) g1[q][j] = Vec<T>(T(0));
  for (int k = 0; k < U; ++k) {
    Vec<T> w[NH];
    for (int j = 0; j < NH; ++j) w[j] = Vec<T>::loadu(w2t + k * H + j * V);
    for (int q = 0; q < 2 * PR; ++q) {
      const Vec<T> b(g2[q][k]);
      for (int j = 0; j < NH; ++j) g1[q][j] = at::vec::fmadd(b, w[j], g1[q][j]);
    }
  }
  // ... and the first SiLU; pair sums and differences
  for (int r = 0; r < PR; ++r) {
    for (int j = 0; j < NH; ++j) {
      const Vec<T> g1a = g1[2 * r][j] * silu_grad_vec(x[2 * r][j], sx[2 * r][j]);
      const Vec<T> g1b = g1[2 * r + 1][j] * silu_grad_vec(x[2 * r + 1][j], sx[2 * r + 1][j]);
      (g1a + g1b).store(sum + r * H + j * V);
      (g1a - g1b).store(diff + r * H + j * V);
    }
  }
}

template <typename T>
struct PairRowKernels {
  // pair rows per call of the blocked kernels: 4 in float (16 accumulators for Facet-S),
  // 2 in double (the vectors hold half as many values); measured best of 1, 2, 4
  static constexpr int64_t kBlock = sizeof(T) == 4 ? 4 : 2;
  void (*forward_block)(const T*, const T*, const T*, T*, T*) = nullptr;
  void (*forward_one)(const T*, const T*, const T*, T*, T*) = nullptr;
  void (*backward_block)(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*) =
      nullptr;
  void (*backward_one)(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*) =
      nullptr;
};

template <typename T, int NH, int NU>
PairRowKernels<T> make_pair_row_kernels() {
  constexpr int PR = PairRowKernels<T>::kBlock;
  PairRowKernels<T> k;
  k.forward_block = &pair_rows_forward<T, NH, NU, PR>;
  k.forward_one = &pair_rows_forward<T, NH, NU, 1>;
  k.backward_block = &pair_rows_backward<T, NH, NU, PR>;
  k.backward_one = &pair_rows_backward<T, NH, NU, 1>;
  return k;
}

// The register-blocked kernels for hidden and uh widths of 1, 2 or 4 vectors (Facet-S: 16
// and 32), else none (the kernels then take the pass-by-pass code)
template <typename T>
PairRowKernels<T> pair_row_kernels(int64_t hidden, int64_t uh) {
  constexpr int64_t V = Vec<T>::size();
  if (hidden % V || uh % V) return {};
  const int64_t nh = hidden / V, nu = uh / V;
#define FACET_S2_PAIR_CASE(A, B) \
  if (nh == A && nu == B) return make_pair_row_kernels<T, A, B>();
  FACET_S2_PAIR_CASE(1, 1)
  FACET_S2_PAIR_CASE(1, 2)
  FACET_S2_PAIR_CASE(1, 4)
  FACET_S2_PAIR_CASE(2, 1)
  FACET_S2_PAIR_CASE(2, 2)
  FACET_S2_PAIR_CASE(2, 4)
  FACET_S2_PAIR_CASE(4, 1)
  FACET_S2_PAIR_CASE(4, 2)
  FACET_S2_PAIR_CASE(4, 4)
#undef FACET_S2_PAIR_CASE
  return {};
}

struct S2Shape {
  int64_t n, dim, G, H, heads, hidden, uh, u;
};

// The antipodal layout of a centrally symmetric grid (Lebedev; Gauss and SOFT with an even
// number of alpha points): grid points G/2 + p are the antipodes -x_p of points p < G/2, and
// the coefficient rows are ordered by parity, the de rows of even l first. Since
// Y_lm(-x) = (-1)^l Y_lm(x) (and the quadrature weights of antipodes are equal),
//   to_grid[d, G/2 + p] = +-to_grid[d, p],  from_grid[G/2 + p, d] = +-from_grid[p, d]
// (+ for even rows, - for odd), exactly. Then the transforms need half the multiplications:
// grid values at p and -x_p are E + O and E - O with E, O the even and odd rows' half-grid
// products, and a projection back sums pairs (the even rows) or differences (the odd rows) of
// grid values over the half grid. Returns de, or -1 when the matrices do not have this layout
// (the kernels then take the plain transforms; same function).
template <typename T>
int64_t antipodal_even_rows(const S2Shape& s, const T* tg, const T* fg) {
  if (s.G % 2 || s.G == 0) return -1;
  const int64_t gh = s.G / 2;
  int64_t even = 0;
  bool odd_seen = false;
  for (int64_t d = 0; d < s.dim; ++d) {
    bool same = true, opposite = true;
    for (int64_t p = 0; p < gh && (same || opposite); ++p) {
      const T a = tg[d * s.G + p], b = tg[d * s.G + gh + p];
      const T fa = fg[p * s.dim + d], fb = fg[(gh + p) * s.dim + d];
      same = same && b == a && fb == fa;
      opposite = opposite && b == -a && fb == -fa;
    }
    if (same && !odd_seen) {
      ++even;
    } else if (opposite) {
      odd_seen = true;
    } else {
      return -1;
    }
  }
  return (even > 0 && even < s.dim) ? even : -1;
}

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

// the forward over atoms begin..end (a function of its own, not inlined into the parallel
// region: its shape and operands are locals the compiler keeps in registers)
template <typename T>
void forward_rows(const S2Shape s, const T* z, const T* tg, const T* w2, const T* fg, T* out,
                  const int64_t de, const PairRowKernels<T> rk, int64_t begin, int64_t end) {
  // grid-sized activations for the paths that keep them (none in the register-blocked one)
  std::vector<T> a1, a2;
  if (de < 0 || !rk.forward_block) {
    a1.resize(s.G * s.H);
    a2.resize(s.G * s.u);
  }
  if (de < 0) {
    for (int64_t a = begin; a < end; ++a) {
      gemm<T>(true, false, s.G, s.H, s.dim, tg, s.G, z + a * s.dim * s.H, s.H, a1.data(),
              s.H);
      silu_inplace(a1.data(), s.G * s.H);
      gemm<T>(false, false, s.G * s.heads, s.uh, s.hidden, a1.data(), s.hidden, w2, s.uh,
              a2.data(), s.uh);
      silu_inplace(a2.data(), s.G * s.u);
      gemm<T>(true, false, s.dim, s.u, s.G, fg, s.dim, a2.data(), s.u,
              out + a * s.dim * s.u, s.u);
    }
    return;
  }
  // antipodal layout (see antipodal_even_rows): half-grid transforms
  const int64_t gh = s.G / 2, dodd = s.dim - de, rows = gh * s.heads;
  std::vector<T> e(gh * s.H), o(gh * s.H), sum(gh * s.u), diff(gh * s.u);
  for (int64_t a = begin; a < end; ++a) {
    const T* za = z + a * s.dim * s.H;
    gemm<T>(true, false, gh, s.H, de, tg, s.G, za, s.H, e.data(), s.H);
    gemm<T>(true, false, gh, s.H, dodd, tg + de * s.G, s.G, za + de * s.H, s.H, o.data(),
            s.H);
    if (rk.forward_block) {
      constexpr int64_t B = PairRowKernels<T>::kBlock;
      for (int64_t r = 0; r < rows;) {
        const auto kernel = r + B <= rows ? rk.forward_block : rk.forward_one;
        kernel(e.data() + r * s.hidden, o.data() + r * s.hidden, w2, sum.data() + r * s.uh,
               diff.data() + r * s.uh);
        r += r + B <= rows ? B : 1;
      }
    } else {
      pair_silu<T>(e.data(), o.data(), a1.data(), nullptr, nullptr, gh * s.H);
      gemm<T>(false, false, s.G * s.heads, s.uh, s.hidden, a1.data(), s.hidden, w2, s.uh,
              a2.data(), s.uh);
      silu_pair_sums<T>(a2.data(), sum.data(), diff.data(), gh * s.u);
    }
    T* oa = out + a * s.dim * s.u;
    gemm<T>(true, false, de, s.u, gh, fg, s.dim, sum.data(), s.u, oa, s.u);
    gemm<T>(true, false, dodd, s.u, gh, fg + de, s.dim, diff.data(), s.u, oa + de * s.u,
            s.u);
  }
}

template <typename T>
void forward_kernel(const S2Shape& s, const T* z, const T* tg, const T* w2, const T* fg, T* out) {
  const int64_t de = antipodal_even_rows(s, tg, fg);
  const PairRowKernels<T> rk = pair_row_kernels<T>(s.hidden, s.uh);
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    forward_rows<T>(s, z, tg, w2, fg, out, de, rk, begin, end);
  });
}

// the backward over atoms begin..end (see forward_rows); w2t = w2^T
template <typename T>
void backward_rows(const S2Shape s, const T* grad, const T* z, const T* tg, const T* w2,
                   const T* fg, T* gz, const int64_t de, const PairRowKernels<T> rk,
                   const std::vector<T>& w2t, int64_t begin, int64_t end) {
  // a1 holds silu(P) until Q is computed, then the gradient for A1; p serves every path
  // (the register-blocked one keeps its pair sums and differences there), the grid-sized
  // rest only the paths that use them
  std::vector<T> p(s.G * s.H), sp, a1, q, sq, g2;
  if (de < 0 || !rk.backward_block) {
    sp.resize(s.G * s.H);
    a1.resize(s.G * s.H);
    q.resize(s.G * s.u);
    sq.resize(s.G * s.u);
    g2.resize(s.G * s.u);
  }
  if (de < 0) {
    for (int64_t a = begin; a < end; ++a) {
      // recompute the activations, keeping the sigmoids for the SiLU derivatives
      gemm<T>(true, false, s.G, s.H, s.dim, tg, s.G, z + a * s.dim * s.H, s.H, p.data(),
              s.H);
      sigmoid_silu<T>(p.data(), sp.data(), a1.data(), s.G * s.H);
      gemm<T>(false, false, s.G * s.heads, s.uh, s.hidden, a1.data(), s.hidden, w2, s.uh,
              q.data(), s.uh);
      sigmoid_silu<T>(q.data(), sq.data(), nullptr, s.G * s.u);
      // d out / d A2 = from_grid grad[a], then back through the two SiLUs and w2
      gemm<T>(false, false, s.G, s.u, s.dim, fg, s.dim, grad + a * s.dim * s.u, s.u,
              g2.data(), s.u);
      times_silu_grad(g2.data(), q.data(), sq.data(), s.G * s.u);
      T* g1 = a1.data();
      gemm<T>(false, true, s.G * s.heads, s.hidden, s.uh, g2.data(), s.uh, w2, s.uh, g1,
              s.hidden);
      times_silu_grad(g1, p.data(), sp.data(), s.G * s.H);
      gemm<T>(false, false, s.dim, s.H, s.G, tg, s.G, g1, s.H, gz + a * s.dim * s.H, s.H);
    }
    return;
  }
  // antipodal layout (see antipodal_even_rows): half-grid transforms
  const int64_t gh = s.G / 2, dodd = s.dim - de, rows = gh * s.heads;
  std::vector<T> e(gh * std::max(s.H, s.u)), o(gh * std::max(s.H, s.u));
  if (rk.backward_block) {
    // register-blocked: the pair rows' MLP in registers
    std::vector<T> ge(gh * s.u), go(gh * s.u);
    for (int64_t a = begin; a < end; ++a) {
      const T* za = z + a * s.dim * s.H;
      const T* ga = grad + a * s.dim * s.u;
      gemm<T>(true, false, gh, s.H, de, tg, s.G, za, s.H, e.data(), s.H);
      gemm<T>(true, false, gh, s.H, dodd, tg + de * s.G, s.G, za + de * s.H, s.H,
              o.data(), s.H);
      gemm<T>(false, false, gh, s.u, de, fg, s.dim, ga, s.u, ge.data(), s.u);
      gemm<T>(false, false, gh, s.u, dodd, fg + de, s.dim, ga + de * s.u, s.u, go.data(),
              s.u);
      // sums and differences of the pairs' gradients into p's two halves
      T* sum = p.data();
      T* diff = p.data() + gh * s.H;
      constexpr int64_t B = PairRowKernels<T>::kBlock;
      for (int64_t r = 0; r < rows;) {
        const auto kernel = r + B <= rows ? rk.backward_block : rk.backward_one;
        kernel(e.data() + r * s.hidden, o.data() + r * s.hidden, ge.data() + r * s.uh,
               go.data() + r * s.uh, w2, w2t.data(), sum + r * s.hidden, diff + r * s.hidden);
        r += r + B <= rows ? B : 1;
      }
      T* gza = gz + a * s.dim * s.H;
      gemm<T>(false, false, de, s.H, gh, tg, s.G, sum, s.H, gza, s.H);
      gemm<T>(false, false, dodd, s.H, gh, tg + de * s.G, s.G, diff, s.H, gza + de * s.H,
              s.H);
    }
    return;
  }
  for (int64_t a = begin; a < end; ++a) {
    const T* za = z + a * s.dim * s.H;
    const T* ga = grad + a * s.dim * s.u;
    gemm<T>(true, false, gh, s.H, de, tg, s.G, za, s.H, e.data(), s.H);
    gemm<T>(true, false, gh, s.H, dodd, tg + de * s.G, s.G, za + de * s.H, s.H, o.data(),
            s.H);
    pair_silu<T>(e.data(), o.data(), a1.data(), p.data(), sp.data(), gh * s.H);
    gemm<T>(false, false, s.G * s.heads, s.uh, s.hidden, a1.data(), s.hidden, w2, s.uh,
            q.data(), s.uh);
    sigmoid_silu<T>(q.data(), sq.data(), nullptr, s.G * s.u);
    // d out / d A2 at p and its antipode: from the even and odd rows of grad[a]
    gemm<T>(false, false, gh, s.u, de, fg, s.dim, ga, s.u, e.data(), s.u);
    gemm<T>(false, false, gh, s.u, dodd, fg + de, s.dim, ga + de * s.u, s.u, o.data(), s.u);
    pair_times_silu_grad<T>(e.data(), o.data(), q.data(), sq.data(), g2.data(), gh * s.u);
    T* g1 = a1.data();
    gemm<T>(false, true, s.G * s.heads, s.hidden, s.uh, g2.data(), s.uh, w2, s.uh, g1,
            s.hidden);
    silu_grad_pair_sums<T>(g1, p.data(), sp.data(), e.data(), o.data(), gh * s.H);
    T* gza = gz + a * s.dim * s.H;
    gemm<T>(false, false, de, s.H, gh, tg, s.G, e.data(), s.H, gza, s.H);
    gemm<T>(false, false, dodd, s.H, gh, tg + de * s.G, s.G, o.data(), s.H, gza + de * s.H,
            s.H);
  }
}

template <typename T>
void backward_kernel(const S2Shape& s, const T* grad, const T* z, const T* tg, const T* w2,
                     const T* fg, T* gz) {
  const int64_t de = antipodal_even_rows(s, tg, fg);
  const PairRowKernels<T> rk = pair_row_kernels<T>(s.hidden, s.uh);
  std::vector<T> w2t(s.hidden * s.uh);  // w2^T [uh, hidden] for the register-blocked kernel
  for (int64_t k = 0; k < s.hidden; ++k)
    for (int64_t j = 0; j < s.uh; ++j) w2t[j * s.hidden + k] = w2[k * s.uh + j];
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    backward_rows<T>(s, grad, z, tg, w2, fg, gz, de, rk, w2t, begin, end);
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
