// Fused CPU kernels of Facet's channel-wise ("uvu") tensor-product convolution, for inference.
//
// One block of the tensor product (input irrep l1 with `mul` channels of dimension d1, its K
// output components over P paths) for n output nodes with m neighbour slots each:
//
//   agg[a, u, k] = sum_s W[a,s][p(k), u] * sum_i t[a,s,i,k] * x[nbr[a,s], i, u]
//   W[a,s][p, u] = sum_b basis[a,s,b] * c[b, p, u]          (radial weights of the edge)
//
// (the math of facet/tensor_product.py's UVUTensorProduct.forward_slots, evaluated edge by edge
// instead of as one padded batched matmul: ~4x fewer multiplications and no slot-sized
// intermediate in memory). `t` = Y @ Wigner coupling per slot, computed by the caller. The
// backward kernel recomputes W and the per-edge products instead of storing them and returns
// the gradients for x, t and basis; there is none for c (frozen weights: inference only).
//
// Layouts (contiguous): x [N, d1, mul] (each row's values dense, any row stride: x may be a
// block of columns of wider rows); nbr [n, m] int64 (rows of x; padding slots point at
// any valid row and have basis 0); t [n, m, d1, K]; basis [n, m, nb]; c [nb, P, mul];
// path_of_k [K] int64 in [0, P); agg and its gradient [n, mul, K].
//
// Registered as facet::uvu_tp_block and facet::uvu_tp_block_backward. facet::uvu_tp_layer runs
// every block of a layer's tensor product in one call, t = Y @ coupling included (and
// returned for its backward, which returns the gradients for the node features, Y and the
// basis): one operator and one autograd node per layer instead of ~12 ATen calls per block.
// Built by facet/ops (for Python) and compiled into the LAMMPS plugin (CMakeLists.txt), so
// AOTInductor packages that call the ops run in both.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "blas.h"

namespace {

struct BlockShape {
  int64_t n, m, d1, mul, K, nb, P, N;
  int64_t xs = 0;  // x's row stride (elements): its rows may be columns of a wider array
  // the result and its gradient per node [K, mul] (component-major, uvu_tp_layer) instead of
  // [mul, K] (uvu_tp_block)
  bool kmajor = false;
};

// x [N, d1, mul] with each row's d1 x mul values dense (any row stride: a block of columns of
// the component-major node features, facet/blocks.py), or a contiguous copy
at::Tensor dense_rows(const at::Tensor& x) {
  const bool dense = (x.size(2) == 1 || x.stride(2) == 1) &&
                     (x.size(1) == 1 || x.stride(1) == x.size(2)) &&
                     x.stride(0) >= x.size(1) * x.size(2);
  return dense ? x : x.contiguous();
}

BlockShape check_inputs(const at::Tensor& x, const at::Tensor& nbr, const at::Tensor& t,
                        const at::Tensor& basis, const at::Tensor& c, const at::Tensor& path_of_k) {
  TORCH_CHECK(x.device().is_cpu(), "facet::uvu_tp_block runs on the CPU only");
  TORCH_CHECK(x.dim() == 3 && nbr.dim() == 2 && t.dim() == 4 && basis.dim() == 3 &&
                  c.dim() == 3 && path_of_k.dim() == 1,
              "facet::uvu_tp_block: expected x [N,d1,mul], nbr [n,m], t [n,m,d1,K], "
              "basis [n,m,nb], c [nb,P,mul], path_of_k [K]");
  BlockShape s{nbr.size(0), nbr.size(1), x.size(1), x.size(2), t.size(3),
               basis.size(2), c.size(1), x.size(0)};
  TORCH_CHECK(t.size(0) == s.n && t.size(1) == s.m && t.size(2) == s.d1 && basis.size(0) == s.n &&
                  basis.size(1) == s.m && c.size(0) == s.nb && c.size(2) == s.mul &&
                  path_of_k.size(0) == s.K,
              "facet::uvu_tp_block: inconsistent shapes");
  TORCH_CHECK(nbr.scalar_type() == at::kLong && path_of_k.scalar_type() == at::kLong,
              "facet::uvu_tp_block: nbr and path_of_k must be int64");
  TORCH_CHECK(t.scalar_type() == x.scalar_type() && basis.scalar_type() == x.scalar_type() &&
                  c.scalar_type() == x.scalar_type(),
              "facet::uvu_tp_block: x, t, basis and c must have one dtype");
  return s;
}

// every index in [0, bound): one pass over the raw values (no reduction ops, no sync: the
// kernels run several times per evaluation and small systems felt the per-call overhead)
bool in_range(const at::Tensor& index, int64_t bound) {
  const int64_t* v = index.data_ptr<int64_t>();
  const int64_t n = index.numel();
  bool ok = true;
  for (int64_t q = 0; q < n; ++q) ok &= (v[q] >= 0) & (v[q] < bound);
  return ok;
}

void check_indices(const BlockShape& s, const at::Tensor& nbr, const at::Tensor& pk) {
  TORCH_CHECK(in_range(nbr, s.N), "facet::uvu_tp_block: neighbour index out of range");
  TORCH_CHECK(in_range(pk, s.P), "facet::uvu_tp_block: path index out of range");
}

// w[p*mul + u] = sum_b bas[b] * c[b, p, u]
template <typename T>
inline void radial_weights(const T* __restrict bas, const T* __restrict c, T* __restrict w,
                           int64_t nb, int64_t pm) {
  std::fill(w, w + pm, T(0));
  for (int64_t b = 0; b < nb; ++b) {
    const T bb = bas[b];
    if (bb == T(0)) continue;
    const T* __restrict cb = c + b * pm;
#pragma omp simd
    for (int64_t q = 0; q < pm; ++q) w[q] += bb * cb[q];
  }
}

// prod[u] = sum_i te[i*K + k] * xj[i*mul + u]
template <typename T>
inline void edge_product(const T* __restrict te, const T* __restrict xj, T* __restrict prod,
                         int64_t k, int64_t K, int64_t d1, int64_t mul) {
  const T t0 = te[k];
#pragma omp simd
  for (int64_t u = 0; u < mul; ++u) prod[u] = t0 * xj[u];
  for (int64_t i = 1; i < d1; ++i) {
    const T ti = te[i * K + k];
    const T* __restrict xi = xj + i * mul;
#pragma omp simd
    for (int64_t u = 0; u < mul; ++u) prod[u] += ti * xi[u];
  }
}

// A node's neighbours are shared between nodes: with several threads each accumulates the
// neighbour gradient in a buffer of its own (the first thread's call allocates it), added into
// gx after the parallel loop.
// the most threads at::parallel_for can run here: torch's count, or (when an OpenMP runtime other
// than torch's serves this library's parallel regions, e.g. in a LAMMPS built with OpenMP) that
// runtime's; a thread's id is below it
inline int max_threads() {
  int n = at::get_num_threads();
#ifdef _OPENMP
  n = std::max(n, omp_get_max_threads());
#endif
  return n;
}

template <typename T>
class NeighbourGradient {
 public:
  NeighbourGradient(T* gx, int64_t size)
      : gx_(gx), size_(size), threads_(max_threads()), buffers_(threads_ > 1 ? threads_ : 0) {}

  // where the calling thread accumulates
  T* for_this_thread() {
    if (threads_ <= 1) return gx_;
    const int tid = at::get_thread_num();
    TORCH_CHECK(tid >= 0 && tid < threads_, "facet::uvu_tp_block_backward: thread ", tid,
                " of ", threads_);
    auto& buf = buffers_[tid];
    if (buf.empty()) buf.assign(size_, T(0));
    return buf.data();
  }

  void reduce() {
    for (auto& buf : buffers_) {
      if (buf.empty()) continue;
      for (int64_t q = 0; q < size_; ++q) gx_[q] += buf[q];
    }
  }

 private:
  T* gx_;
  int64_t size_;
  int threads_;
  std::vector<std::vector<T>> buffers_;
};

// [rows, cols] -> [cols, rows]: a node's block between the operators' [mul, K] layout and the
// kernels' [K, mul]
template <typename T>
inline void transpose_block(const T* in, int64_t rows, int64_t cols, T* out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < cols; ++q) out[q * rows + r] = in[r * cols + q];
}

// a node's result, [K, mul] in the kernels, into the operator's layout
template <typename T>
inline void store_node(const BlockShape& s, const T* acc, T* out) {
  if (s.kmajor) {
    std::copy(acc, acc + s.K * s.mul, out);
  } else {
    transpose_block(acc, s.K, s.mul, out);  // [K, mul] -> [mul, K]
  }
}

// a node's gradient as the kernels read it, [K, mul]: in place, or transposed into buf
template <typename T>
inline const T* load_node(const BlockShape& s, const T* grad, T* buf) {
  if (s.kmajor) return grad;
  transpose_block(grad, s.mul, s.K, buf);  // [mul, K] -> [K, mul]
  return buf;
}

// Generic kernels: any multiplicity and irrep dimension (scalar loops the compiler vectorises)
template <typename T>
void forward_generic(const BlockShape& s, const T* x, const int64_t* nbr, const T* t,
                    const T* basis, const T* c, const int64_t* pk, T* out) {
  const int64_t pm = s.P * s.mul, km = s.K * s.mul;
  at::parallel_for(0, s.n, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> w(pm), acc(km), prod(s.mul);
    for (int64_t a = begin; a < end; ++a) {
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t sl = 0; sl < s.m; ++sl) {
        const int64_t e = a * s.m + sl;
        const T* bas = basis + e * s.nb;
        if (std::all_of(bas, bas + s.nb, [](T v) { return v == T(0); })) continue;
        radial_weights(bas, c, w.data(), s.nb, pm);
        const T* xj = x + nbr[e] * s.xs;
        const T* te = t + e * s.d1 * s.K;
        for (int64_t k = 0; k < s.K; ++k) {
          edge_product(te, xj, prod.data(), k, s.K, s.d1, s.mul);
          const T* __restrict wp = w.data() + pk[k] * s.mul;
          T* __restrict ak = acc.data() + k * s.mul;
          const T* __restrict pr = prod.data();
#pragma omp simd
          for (int64_t u = 0; u < s.mul; ++u) ak[u] += wp[u] * pr[u];
        }
      }
      store_node(s, acc.data(), out + a * km);
    }
  });
}

template <typename T>
void backward_generic(const BlockShape& s, const T* grad, const T* x, const int64_t* nbr,
                     const T* t, const T* basis, const T* c, const int64_t* pk, T* gx, T* gt,
                     T* gb) {
  const int64_t pm = s.P * s.mul, km = s.K * s.mul, xrow = s.d1 * s.mul;
  NeighbourGradient<T> neighbour_grad(gx, s.N * xrow);
  at::parallel_for(0, s.n, 16, [&](int64_t begin, int64_t end) {
    T* gxt = neighbour_grad.for_this_thread();
    std::vector<T> w(pm), gw(pm), g(km), prod(s.mul), gp(s.mul);
    for (int64_t a = begin; a < end; ++a) {
      const T* ga = load_node(s, grad + a * km, g.data());
      for (int64_t sl = 0; sl < s.m; ++sl) {
        const int64_t e = a * s.m + sl;
        const T* bas = basis + e * s.nb;
        radial_weights(bas, c, w.data(), s.nb, pm);
        std::fill(gw.begin(), gw.end(), T(0));
        const int64_t j = nbr[e];
        const T* xj = x + j * s.xs;
        T* gxj = gxt + j * xrow;
        const T* te = t + e * s.d1 * s.K;
        T* gte = gt + e * s.d1 * s.K;
        for (int64_t k = 0; k < s.K; ++k) {
          edge_product(te, xj, prod.data(), k, s.K, s.d1, s.mul);
          const T* __restrict gk = ga + k * s.mul;
          const T* __restrict wp = w.data() + pk[k] * s.mul;
          T* __restrict gwp = gw.data() + pk[k] * s.mul;
          const T* __restrict pr = prod.data();
          T* __restrict gpp = gp.data();
#pragma omp simd
          for (int64_t u = 0; u < s.mul; ++u) {
            gwp[u] += gk[u] * pr[u];
            gpp[u] = gk[u] * wp[u];
          }
          for (int64_t i = 0; i < s.d1; ++i) {
            const T ti = te[i * s.K + k];
            const T* __restrict xi = xj + i * s.mul;
            T* __restrict gxi = gxj + i * s.mul;
            T dot = T(0);
#pragma omp simd reduction(+ : dot)
            for (int64_t u = 0; u < s.mul; ++u) {
              dot += xi[u] * gpp[u];
              gxi[u] += ti * gpp[u];
            }
            gte[i * s.K + k] = dot;
          }
        }
        T* gbe = gb + e * s.nb;
        for (int64_t b = 0; b < s.nb; ++b) {
          const T* __restrict cb = c + b * pm;
          const T* __restrict gwv = gw.data();
          T dot = T(0);
#pragma omp simd reduction(+ : dot)
          for (int64_t q = 0; q < pm; ++q) dot += cb[q] * gwv[q];
          gbe[b] = dot;
        }
      }
    }
  });
  neighbour_grad.reduce();
}

// Register-blocked kernels for a multiplicity that is a multiple of the vector width and an
// irrep dimension D1 known at compile time: the channels u go in vector lanes, one chunk of
// lanes at a time; the neighbour's D1 feature vectors, the edge's radial weight of a path and
// the neighbour-gradient partials stay in registers, only the [K, mul] accumulators of the node
// live in L1. Paths are walked as runs of consecutive k with the same path (p(k) is a step
// function for the blocks UVUTensorProduct builds; any p(k) works).
struct PathRun {
  int64_t p, k0, k1;
};

std::vector<PathRun> path_runs(const int64_t* pk, int64_t K) {
  std::vector<PathRun> runs;
  for (int64_t k = 0; k < K; ++k) {
    if (runs.empty() || runs.back().p != pk[k]) runs.push_back({pk[k], k, k});
    runs.back().k1 = k + 1;
  }
  return runs;
}

template <typename T>
inline T lane_sum(const at::vec::Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) return _mm512_reduce_add_ps(v);
  else return _mm512_reduce_add_pd(v);
#else
  constexpr int64_t VW = at::vec::Vectorized<T>::size();
  alignas(64) T buf[VW];
  v.store(buf);
  T sum = 0;
  for (int64_t l = 0; l < VW; ++l) sum += buf[l];
  return sum;
#endif
}

// out[q] = lane_sum(v[q]) for q < n: with AVX-512, sixteen (float) / eight (double) vectors at a
// time by an add-shuffle butterfly (~3 operations per vector instead of ~8 for a reduction each)
template <typename T>
inline void lane_sums(const at::vec::Vectorized<T>* v, int64_t n, T* out) {
  int64_t q = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    for (; q + 16 <= n; q += 16) {
      __m512 s2[8], s4[4];
      for (int i = 0; i < 8; ++i) {  // pairs: [a0+a2, b0+b2, a1+a3, b1+b3] per 128-bit lane
        const __m512 a = v[q + 2 * i], b = v[q + 2 * i + 1];
        s2[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
      }
      for (int i = 0; i < 4; ++i)  // quads: each 128-bit lane's sums of four vectors
        s4[i] = _mm512_add_ps(_mm512_shuffle_ps(s2[2 * i], s2[2 * i + 1], 0x44),
                              _mm512_shuffle_ps(s2[2 * i], s2[2 * i + 1], 0xEE));
      const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(s4[0], s4[1], 0x44),
                                      _mm512_shuffle_f32x4(s4[0], s4[1], 0xEE));
      const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(s4[2], s4[3], 0x44),
                                      _mm512_shuffle_f32x4(s4[2], s4[3], 0xEE));
      _mm512_storeu_ps(out + q, _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88),
                                              _mm512_shuffle_f32x4(ab, cd, 0xDD)));
    }
  } else {
    for (; q + 8 <= n; q += 8) {
      __m512d s2[4];
      for (int i = 0; i < 4; ++i) {  // pairs: [a0+a1, b0+b1] per 128-bit lane
        const __m512d a = v[q + 2 * i], b = v[q + 2 * i + 1];
        s2[i] = _mm512_add_pd(_mm512_unpacklo_pd(a, b), _mm512_unpackhi_pd(a, b));
      }
      const __m512d p = _mm512_add_pd(_mm512_shuffle_f64x2(s2[0], s2[1], 0x44),
                                      _mm512_shuffle_f64x2(s2[0], s2[1], 0xEE));
      const __m512d r = _mm512_add_pd(_mm512_shuffle_f64x2(s2[2], s2[3], 0x44),
                                      _mm512_shuffle_f64x2(s2[2], s2[3], 0xEE));
      _mm512_storeu_pd(out + q, _mm512_add_pd(_mm512_shuffle_f64x2(p, r, 0x88),
                                              _mm512_shuffle_f64x2(p, r, 0xDD)));
    }
  }
#endif
  for (; q < n; ++q) out[q] = lane_sum<T>(v[q]);
}

// the nonzero entries of one edge's radial basis: returns their number
template <typename T>
inline int64_t nonzero_basis(const T* bas, int64_t nb, int64_t* idx, T* val) {
  int64_t nnz = 0;
  for (int64_t b = 0; b < nb; ++b) {
    if (bas[b] != T(0)) {
      idx[nnz] = b;
      val[nnz++] = bas[b];
    }
  }
  return nnz;
}

// the radial weights W[p, u0 : u0 + W] of an edge from its nonzero basis entries
template <typename T>
inline at::vec::Vectorized<T> radial_chunk(const T* c, int64_t pm, int64_t off, int64_t nnz,
                                           const int64_t* idx, const T* val) {
  using Vec = at::vec::Vectorized<T>;
  Vec w(T(0));
  for (int64_t q = 0; q < nnz; ++q) w = at::vec::fmadd(Vec(val[q]), Vec::loadu(c + idx[q] * pm + off), w);
  return w;
}

// gb[b] = sum_q c[b, q] gw[q] (q over P * mul; pm a multiple of the vector width), four b at a
// time so that each gw load serves four products
template <typename T>
inline void basis_gradient(const T* c, const T* gw, int64_t nb, int64_t pm, T* gb) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t VW = Vec::size();
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    Vec a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    const T* c0 = c + b * pm;
    for (int64_t q = 0; q < pm; q += VW) {
      const Vec g = Vec::loadu(gw + q);
      a0 = at::vec::fmadd(Vec::loadu(c0 + q), g, a0);
      a1 = at::vec::fmadd(Vec::loadu(c0 + pm + q), g, a1);
      a2 = at::vec::fmadd(Vec::loadu(c0 + 2 * pm + q), g, a2);
      a3 = at::vec::fmadd(Vec::loadu(c0 + 3 * pm + q), g, a3);
    }
    gb[b] = lane_sum<T>(a0);
    gb[b + 1] = lane_sum<T>(a1);
    gb[b + 2] = lane_sum<T>(a2);
    gb[b + 3] = lane_sum<T>(a3);
  }
  for (; b < nb; ++b) {
    Vec a0(T(0));
    for (int64_t q = 0; q < pm; q += VW) a0 = at::vec::fmadd(Vec::loadu(c + b * pm + q), Vec::loadu(gw + q), a0);
    gb[b] = lane_sum<T>(a0);
  }
}

// the register-blocked forward over atoms begin..end (a function of its own, not inlined into
// the parallel region: its shape and operands are locals the compiler can keep in registers)
template <typename T, int D1>
void forward_vec_rows(const BlockShape s, const T* x, const int64_t* nbr, const T* t,
                      const T* basis, const T* c, const std::vector<PathRun>& runs, T* out,
                      int64_t begin, int64_t end) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t VW = Vec::size();
  const int64_t mul = s.mul, K = s.K, pm = s.P * mul, km = K * mul;
  std::vector<T> acc(km), val(s.nb);
  std::vector<int64_t> idx(s.nb);
  for (int64_t a = begin; a < end; ++a) {
    std::fill(acc.begin(), acc.end(), T(0));
    for (int64_t sl = 0; sl < s.m; ++sl) {
      const int64_t e = a * s.m + sl;
      const int64_t nnz = nonzero_basis(basis + e * s.nb, s.nb, idx.data(), val.data());
      if (nnz == 0) continue;
      const T* xj = x + nbr[e] * s.xs;
      const T* te = t + e * D1 * K;
      for (int64_t u0 = 0; u0 < mul; u0 += VW) {
        Vec xv[D1];
        for (int i = 0; i < D1; ++i) xv[i] = Vec::loadu(xj + i * mul + u0);
        for (const PathRun& r : runs) {
          const Vec w = radial_chunk(c, pm, r.p * mul + u0, nnz, idx.data(), val.data());
          for (int64_t k = r.k0; k < r.k1; ++k) {
            Vec prod = xv[0] * Vec(te[k]);
            for (int i = 1; i < D1; ++i) prod = at::vec::fmadd(xv[i], Vec(te[i * K + k]), prod);
            T* ak = acc.data() + k * mul + u0;
            at::vec::fmadd(w, prod, Vec::loadu(ak)).store(ak);
          }
        }
      }
    }
    store_node(s, acc.data(), out + a * km);
  }
}

template <typename T, int D1>
void forward_vec(const BlockShape& s, const T* x, const int64_t* nbr, const T* t, const T* basis,
                 const T* c, const int64_t* pk, T* out) {
  const auto runs = path_runs(pk, s.K);
  at::parallel_for(0, s.n, 16, [&](int64_t begin, int64_t end) {
    forward_vec_rows<T, D1>(s, x, nbr, t, basis, c, runs, out, begin, end);
  });
}

// the register-blocked backward over atoms begin..end, neighbours' gradients into gxt (see
// forward_vec_rows)
template <typename T, int D1>
void backward_vec_rows(const BlockShape s, const T* grad, const T* x, const int64_t* nbr,
                       const T* t, const T* basis, const T* c,
                       const std::vector<PathRun>& runs, bool every_path_used, T* gxt, T* gt,
                       T* gb, int64_t begin, int64_t end) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t VW = Vec::size();
  const int64_t mul = s.mul, K = s.K, nb = s.nb, pm = s.P * mul, km = K * mul, xrow = D1 * mul;
  std::vector<T> g(km), val(nb);
  std::vector<int64_t> idx(nb);
  std::vector<Vec> gt_part(D1 * K);
  // the slot's dE/dW [P, mul] (one vector per path and chunk), contracted with c at the end
  std::vector<T> gw_slot(pm);
  for (int64_t a = begin; a < end; ++a) {
    const T* ga = load_node(s, grad + a * km, g.data());
    for (int64_t sl = 0; sl < s.m; ++sl) {
      const int64_t e = a * s.m + sl;
      const int64_t nnz = nonzero_basis(basis + e * nb, nb, idx.data(), val.data());
      const int64_t j = nbr[e];
      const T* xj = x + j * s.xs;
      T* gxj = gxt + j * xrow;
      const T* te = t + e * D1 * K;
      T* gte = gt + e * D1 * K;
      T* gbe = gb + e * nb;
      if (nnz == 0 && std::all_of(te, te + D1 * K, [](T v) { return v == T(0); })) {
        // no radial weight and no harmonics (a padding slot): every gradient is zero
        std::fill(gte, gte + D1 * K, T(0));
        std::fill(gbe, gbe + nb, T(0));
        continue;
      }
      std::fill(gt_part.begin(), gt_part.end(), Vec(T(0)));
      if (!every_path_used) std::fill(gw_slot.begin(), gw_slot.end(), T(0));
      for (int64_t u0 = 0; u0 < mul; u0 += VW) {
        Vec xv[D1], gxv[D1];
        for (int i = 0; i < D1; ++i) {
          xv[i] = Vec::loadu(xj + i * mul + u0);
          gxv[i] = Vec(T(0));
        }
        for (const PathRun& r : runs) {
          const int64_t off = r.p * mul + u0;
          const Vec w = radial_chunk(c, pm, off, nnz, idx.data(), val.data());
          Vec gw(T(0));
          for (int64_t k = r.k0; k < r.k1; ++k) {
            Vec prod = xv[0] * Vec(te[k]);
            for (int i = 1; i < D1; ++i) prod = at::vec::fmadd(xv[i], Vec(te[i * K + k]), prod);
            const Vec gk = Vec::loadu(ga + k * mul + u0);
            gw = at::vec::fmadd(gk, prod, gw);
            const Vec gp = gk * w;
            for (int i = 0; i < D1; ++i) {
              gxv[i] = at::vec::fmadd(Vec(te[i * K + k]), gp, gxv[i]);
              gt_part[i * K + k] = at::vec::fmadd(xv[i], gp, gt_part[i * K + k]);
            }
          }
          gw.store(gw_slot.data() + off);
        }
        for (int i = 0; i < D1; ++i) {
          T* gxi = gxj + i * mul + u0;
          (Vec::loadu(gxi) + gxv[i]).store(gxi);
        }
      }
      lane_sums<T>(gt_part.data(), D1 * K, gte);
      basis_gradient(c, gw_slot.data(), nb, pm, gbe);
    }
  }
}

template <typename T, int D1>
void backward_vec(const BlockShape& s, const T* grad, const T* x, const int64_t* nbr, const T* t,
                  const T* basis, const T* c, const int64_t* pk, T* gx, T* gt, T* gb) {
  const auto runs = path_runs(pk, s.K);
  // a path no k refers to has no gradient: its dE/dW stays zero
  std::vector<bool> used(s.P, false);
  for (const PathRun& r : runs) used[r.p] = true;
  const bool every_path_used = std::all_of(used.begin(), used.end(), [](bool u) { return u; });
  NeighbourGradient<T> neighbour_grad(gx, s.N * D1 * s.mul);
  at::parallel_for(0, s.n, 16, [&](int64_t begin, int64_t end) {
    backward_vec_rows<T, D1>(s, grad, x, nbr, t, basis, c, runs, every_path_used,
                             neighbour_grad.for_this_thread(), gt, gb, begin, end);
  });
  neighbour_grad.reduce();
}

// the register-blocked kernel for this shape, or the generic one
template <typename T>
void forward_kernel(const BlockShape& s, const T* x, const int64_t* nbr, const T* t,
                    const T* basis, const T* c, const int64_t* pk, T* out) {
  if (s.mul % at::vec::Vectorized<T>::size() == 0) {
    switch (s.d1) {
      case 1: return forward_vec<T, 1>(s, x, nbr, t, basis, c, pk, out);
      case 3: return forward_vec<T, 3>(s, x, nbr, t, basis, c, pk, out);
      case 5: return forward_vec<T, 5>(s, x, nbr, t, basis, c, pk, out);
      case 7: return forward_vec<T, 7>(s, x, nbr, t, basis, c, pk, out);
      default: break;
    }
  }
  forward_generic(s, x, nbr, t, basis, c, pk, out);
}

template <typename T>
void backward_kernel(const BlockShape& s, const T* grad, const T* x, const int64_t* nbr,
                     const T* t, const T* basis, const T* c, const int64_t* pk, T* gx, T* gt,
                     T* gb) {
  if (s.mul % at::vec::Vectorized<T>::size() == 0) {
    switch (s.d1) {
      case 1: return backward_vec<T, 1>(s, grad, x, nbr, t, basis, c, pk, gx, gt, gb);
      case 3: return backward_vec<T, 3>(s, grad, x, nbr, t, basis, c, pk, gx, gt, gb);
      case 5: return backward_vec<T, 5>(s, grad, x, nbr, t, basis, c, pk, gx, gt, gb);
      case 7: return backward_vec<T, 7>(s, grad, x, nbr, t, basis, c, pk, gx, gt, gb);
      default: break;
    }
  }
  backward_generic(s, grad, x, nbr, t, basis, c, pk, gx, gt, gb);
}

// one block, its result per node [mul, K] (kmajor: [K, mul])
at::Tensor block_forward(const at::Tensor& x_in, const at::Tensor& nbr_in, const at::Tensor& t_in,
                         const at::Tensor& basis_in, const at::Tensor& c_in,
                         const at::Tensor& pk_in, bool kmajor) {
  BlockShape s = check_inputs(x_in, nbr_in, t_in, basis_in, c_in, pk_in);
  auto x = dense_rows(x_in), nbr = nbr_in.contiguous(), t = t_in.contiguous();
  auto basis = basis_in.contiguous(), c = c_in.contiguous(), pk = pk_in.contiguous();
  s.xs = x.stride(0);
  s.kmajor = kmajor;
  check_indices(s, nbr, pk);
  auto out = kmajor ? at::empty({s.n, s.K, s.mul}, x.options())
                    : at::empty({s.n, s.mul, s.K}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uvu_tp_block", [&] {
    forward_kernel<scalar_t>(s, x.data_ptr<scalar_t>(), nbr.data_ptr<int64_t>(),
                             t.data_ptr<scalar_t>(), basis.data_ptr<scalar_t>(),
                             c.data_ptr<scalar_t>(), pk.data_ptr<int64_t>(),
                             out.data_ptr<scalar_t>());
  });
  return out;
}

// its gradients for x, t and basis from the result's, grad [n, mul, K] (kmajor: [n, K, mul])
std::tuple<at::Tensor, at::Tensor, at::Tensor> block_backward(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& nbr_in,
    const at::Tensor& t_in, const at::Tensor& basis_in, const at::Tensor& c_in,
    const at::Tensor& pk_in, bool kmajor) {
  BlockShape s = check_inputs(x_in, nbr_in, t_in, basis_in, c_in, pk_in);
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == s.n &&
                  grad_in.size(1) == (kmajor ? s.K : s.mul) &&
                  grad_in.size(2) == (kmajor ? s.mul : s.K) &&
                  grad_in.scalar_type() == x_in.scalar_type(),
              "facet::uvu_tp_block_backward: grad must be [n, mul, K] of x's dtype");
  auto grad = grad_in.contiguous(), x = dense_rows(x_in), nbr = nbr_in.contiguous();
  auto t = t_in.contiguous(), basis = basis_in.contiguous(), c = c_in.contiguous();
  auto pk = pk_in.contiguous();
  s.xs = x.stride(0);
  s.kmajor = kmajor;
  check_indices(s, nbr, pk);
  // x's gradient contiguous whatever x's row stride
  auto gx = at::zeros({s.N, s.d1, s.mul}, x.options()), gt = at::empty_like(t),
       gb = at::empty_like(basis);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uvu_tp_block_backward", [&] {
    backward_kernel<scalar_t>(s, grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                              nbr.data_ptr<int64_t>(), t.data_ptr<scalar_t>(),
                              basis.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                              pk.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(),
                              gt.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>());
  });
  return {gx, gt, gb};
}

at::Tensor uvu_tp_block(const at::Tensor& x, const at::Tensor& nbr, const at::Tensor& t,
                        const at::Tensor& basis, const at::Tensor& c, const at::Tensor& pk) {
  return block_forward(x, nbr, t, basis, c, pk, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> uvu_tp_block_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& nbr, const at::Tensor& t,
    const at::Tensor& basis, const at::Tensor& c, const at::Tensor& pk) {
  return block_backward(grad, x, nbr, t, basis, c, pk, false);
}

// ---- A layer's blocks in one call ----
// blocks: 8 integers per block: (input irrep, mul, d1, K, offset of its coupling [d2, d1 K] in
// couplings, first column of its radial coefficients [nb, P mul] in coefficients, P, offset
// of its K path indices in path_of_k) (UVUTensorProduct.blocks with the irrep first)
constexpr int64_t kBlockInts = 8;

struct LayerBlock {
  int64_t irrep, mul, d1, K, c_off, w0, P, ko;
};

std::vector<LayerBlock> check_layer(at::TensorList xs, const at::Tensor& y,
                                    const at::Tensor& basis, const at::Tensor& coefficients,
                                    const at::Tensor& couplings, const at::Tensor& path_of_k,
                                    at::IntArrayRef blocks) {
  TORCH_CHECK(y.dim() == 3 && basis.dim() == 3 && coefficients.dim() == 2 &&
                  couplings.dim() == 1 && path_of_k.dim() == 1,
              "facet::uvu_tp_layer: expected y [n,m,d2], basis [n,m,nb], coefficients [nb,W], "
              "couplings and path_of_k flat");
  TORCH_CHECK(basis.size(0) == y.size(0) && basis.size(1) == y.size(1) &&
                  coefficients.size(0) == basis.size(2),
              "facet::uvu_tp_layer: inconsistent shapes of y, basis and coefficients");
  TORCH_CHECK(couplings.scalar_type() == y.scalar_type() &&
                  coefficients.scalar_type() == y.scalar_type() &&
                  basis.scalar_type() == y.scalar_type(),
              "facet::uvu_tp_layer: y, basis, coefficients and couplings must have one dtype");
  TORCH_CHECK(blocks.size() % kBlockInts == 0, "facet::uvu_tp_layer: blocks must list ",
              kBlockInts, " integers per block");
  const int64_t d2 = y.size(2);
  std::vector<LayerBlock> out;
  for (size_t i = 0; i < blocks.size(); i += kBlockInts) {
    const LayerBlock b{blocks[i], blocks[i + 1], blocks[i + 2], blocks[i + 3],
                       blocks[i + 4], blocks[i + 5], blocks[i + 6], blocks[i + 7]};
    TORCH_CHECK(b.irrep >= 0 && b.irrep < static_cast<int64_t>(xs.size()),
                "facet::uvu_tp_layer: block ", out.size(), " reads input ", b.irrep, " of ",
                xs.size());
    const auto& x = xs[b.irrep];
    TORCH_CHECK(x.dim() == 3 && x.size(1) == b.d1 && x.size(2) == b.mul,
                "facet::uvu_tp_layer: input ", b.irrep, " is not [N, ", b.d1, ", ", b.mul, "]");
    TORCH_CHECK(b.K > 0 && b.P > 0 && b.c_off >= 0 && b.c_off + d2 * b.d1 * b.K <= couplings.numel() &&
                    b.w0 >= 0 && b.w0 + b.P * b.mul <= coefficients.size(1) && b.ko >= 0 &&
                    b.ko + b.K <= path_of_k.numel(),
                "facet::uvu_tp_layer: block ", out.size(), " reads past its couplings, "
                "coefficients or path indices");
    out.push_back(b);
  }
  return out;
}

// One block's radial coefficients [nb, P, mul] (columns w0 .. w0 + P mul of coefficients)
at::Tensor block_coefficients(const LayerBlock& b, const at::Tensor& coefficients) {
  return coefficients.narrow(1, b.w0, b.P * b.mul).reshape({-1, b.P, b.mul}).contiguous();
}

// One block's operands: t = Y @ coupling [n, m, d1, K], its radial coefficients [nb, P, mul]
// and path indices [K]
std::tuple<at::Tensor, at::Tensor, at::Tensor> block_operands(const LayerBlock& b,
                                                              const at::Tensor& y,
                                                              const at::Tensor& coefficients,
                                                              const at::Tensor& couplings,
                                                              const at::Tensor& path_of_k) {
  const int64_t n = y.size(0), m = y.size(1), d2 = y.size(2);
  auto t = at::empty({n, m, b.d1, b.K}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "uvu_tp_layer_t", [&] {
    facet_blas::gemm<scalar_t>(false, false, n * m, b.d1 * b.K, d2, y.data_ptr<scalar_t>(), d2,
                               couplings.data_ptr<scalar_t>() + b.c_off, b.d1 * b.K,
                               t.data_ptr<scalar_t>(), b.d1 * b.K);
  });
  return {t, block_coefficients(b, coefficients), path_of_k.narrow(0, b.ko, b.K)};
}

// the blocks' results [n, K, mul] (component-major: the next linear maps read them without a
// transposition) and their t = Y @ coupling [n, m, d1, K] (for the backward)
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> uvu_tp_layer(
    at::TensorList xs, const at::Tensor& nbr, const at::Tensor& y_in, const at::Tensor& basis_in,
    const at::Tensor& coefficients, const at::Tensor& couplings_in, const at::Tensor& path_of_k,
    at::IntArrayRef blocks) {
  const auto layer = check_layer(xs, y_in, basis_in, coefficients, couplings_in, path_of_k,
                                 blocks);
  const auto y = y_in.contiguous(), basis = basis_in.contiguous();
  const auto couplings = couplings_in.contiguous();
  std::vector<at::Tensor> out, ts;
  for (const auto& b : layer) {
    auto [t, c, pk] = block_operands(b, y, coefficients, couplings, path_of_k);
    out.push_back(block_forward(xs[b.irrep], nbr, t, basis, c, pk, true));
    ts.push_back(t);
  }
  return {out, ts};
}

// gradients for xs (zero for inputs no block reads), y and basis; ts: the forward's
std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> uvu_tp_layer_backward(
    at::TensorList grads, at::TensorList xs, at::TensorList ts, const at::Tensor& nbr,
    const at::Tensor& y_in, const at::Tensor& basis_in, const at::Tensor& coefficients,
    const at::Tensor& couplings_in, const at::Tensor& path_of_k, at::IntArrayRef blocks) {
  const auto layer = check_layer(xs, y_in, basis_in, coefficients, couplings_in, path_of_k,
                                 blocks);
  TORCH_CHECK(grads.size() == layer.size() && ts.size() == layer.size(),
              "facet::uvu_tp_layer_backward: one gradient and one t per block");
  const auto y = y_in.contiguous(), basis = basis_in.contiguous();
  const auto couplings = couplings_in.contiguous();
  const int64_t n = y.size(0), m = y.size(1), d2 = y.size(2);
  std::vector<at::Tensor> gxs(xs.size());
  auto gy = at::zeros_like(y);
  at::Tensor gbasis;
  for (size_t i = 0; i < layer.size(); i++) {
    const auto& b = layer[i];
    auto [gx, gt, gb] = block_backward(grads[i], xs[b.irrep], nbr, ts[i], basis,
                                       block_coefficients(b, coefficients),
                                       path_of_k.narrow(0, b.ko, b.K), true);
    gxs[b.irrep] = gxs[b.irrep].defined() ? gxs[b.irrep].add_(gx) : gx;
    gbasis = gbasis.defined() ? gbasis.add_(gb) : gb;
    // dL/dy += dL/dt @ coupling^T
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "uvu_tp_layer_gy", [&] {
      facet_blas::gemm<scalar_t>(false, true, n * m, d2, b.d1 * b.K, gt.data_ptr<scalar_t>(),
                                 b.d1 * b.K, couplings.data_ptr<scalar_t>() + b.c_off,
                                 b.d1 * b.K, gy.data_ptr<scalar_t>(), d2, scalar_t(1),
                                 scalar_t(1));
    });
  }
  for (size_t i = 0; i < xs.size(); i++)
    if (!gxs[i].defined()) gxs[i] = at::zeros(xs[i].sizes(), xs[i].options());
  if (!gbasis.defined()) gbasis = at::zeros_like(basis);
  return {gxs, gy, gbasis};
}

// The operators as the dispatcher sees them (what autograd and traced graphs call)
at::Tensor call_forward(const at::Tensor& x, const at::Tensor& nbr, const at::Tensor& t,
                        const at::Tensor& basis, const at::Tensor& c, const at::Tensor& pk) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::uvu_tp_block", "")
                       .typed<decltype(uvu_tp_block)>();
  return op.call(x, nbr, t, basis, c, pk);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& nbr, const at::Tensor& t,
    const at::Tensor& basis, const at::Tensor& c, const at::Tensor& pk) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::uvu_tp_block_backward", "")
                       .typed<decltype(uvu_tp_block_backward)>();
  return op.call(grad, x, nbr, t, basis, c, pk);
}

// First derivatives for x, t and basis (forces, stress, layer VJPs); none for c, and the
// backward operator itself is not differentiable: inference only
class UvuTpBlockFunction : public torch::autograd::Function<UvuTpBlockFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& nbr, const at::Tensor& t, const at::Tensor& basis,
                            const at::Tensor& c, const at::Tensor& pk) {
    TORCH_CHECK(!c.requires_grad(),
                "facet::uvu_tp_block (the fused tensor-product kernel) is for inference: it has "
                "no gradient for the radial coefficients. Train with the fused kernels off "
                "(facet.ops.use_fused(model, False), the default of a model being trained)");
    ctx->save_for_backward({x, nbr, t, basis, c, pk});
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(x, nbr, t, basis, c, pk);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [gx, gt, gb] = call_backward(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5]);
    return {gx, at::Tensor(), gt, gb, at::Tensor(), at::Tensor()};
  }
};

at::Tensor uvu_tp_block_autograd(const at::Tensor& x, const at::Tensor& nbr, const at::Tensor& t,
                                 const at::Tensor& basis, const at::Tensor& c,
                                 const at::Tensor& pk) {
  return UvuTpBlockFunction::apply(x, nbr, t, basis, c, pk);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> call_layer_forward(
    at::TensorList xs, const at::Tensor& nbr, const at::Tensor& y, const at::Tensor& basis,
    const at::Tensor& coefficients, const at::Tensor& couplings, const at::Tensor& path_of_k,
    at::IntArrayRef blocks) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::uvu_tp_layer", "")
                       .typed<decltype(uvu_tp_layer)>();
  return op.call(xs, nbr, y, basis, coefficients, couplings, path_of_k, blocks);
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> call_layer_backward(
    at::TensorList grads, at::TensorList xs, at::TensorList ts, const at::Tensor& nbr,
    const at::Tensor& y, const at::Tensor& basis, const at::Tensor& coefficients,
    const at::Tensor& couplings, const at::Tensor& path_of_k, at::IntArrayRef blocks) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("facet::uvu_tp_layer_backward", "")
                       .typed<decltype(uvu_tp_layer_backward)>();
  return op.call(grads, xs, ts, nbr, y, basis, coefficients, couplings, path_of_k, blocks);
}

class UvuTpLayerFunction : public torch::autograd::Function<UvuTpLayerFunction> {
 public:
  // returns the blocks' results, then their t (no gradient: kept for the backward)
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, at::TensorList xs, const at::Tensor& nbr,
      const at::Tensor& y, const at::Tensor& basis, const at::Tensor& coefficients,
      const at::Tensor& couplings, const at::Tensor& path_of_k, at::IntArrayRef blocks) {
    TORCH_CHECK(!coefficients.requires_grad() && !couplings.requires_grad(),
                "facet::uvu_tp_layer (the fused tensor-product kernel) is for inference: it has "
                "no gradient for the radial coefficients. Train with the fused kernels off "
                "(facet.ops.use_fused(model, False), the default of a model being trained)");
    std::vector<at::Tensor> results, ts;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(results, ts) = call_layer_forward(xs, nbr, y, basis, coefficients, couplings,
                                                 path_of_k, blocks);
    }
    std::vector<at::Tensor> saved(xs.begin(), xs.end());
    saved.insert(saved.end(), ts.begin(), ts.end());
    saved.insert(saved.end(), {nbr, y, basis, coefficients, couplings, path_of_k});
    ctx->save_for_backward(saved);
    ctx->saved_data["inputs"] = static_cast<int64_t>(xs.size());
    ctx->saved_data["blocks"] = blocks.vec();
    ctx->mark_non_differentiable(ts);
    torch::autograd::variable_list out(results.begin(), results.end());
    out.insert(out.end(), ts.begin(), ts.end());
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t nx = ctx->saved_data["inputs"].toInt();
    const auto blocks = ctx->saved_data["blocks"].toIntVector();
    const int64_t nblocks = static_cast<int64_t>(blocks.size()) / kBlockInts;
    const std::vector<at::Tensor> xs(saved.begin(), saved.begin() + nx);
    const std::vector<at::Tensor> ts(saved.begin() + nx, saved.begin() + nx + nblocks);
    const int64_t r = nx + nblocks;  // nbr, y, basis, coefficients, couplings, path_of_k
    const auto& y = saved[r + 1];
    std::vector<at::Tensor> gys;
    for (int64_t i = 0; i < nblocks; i++) {
      if (grads[i].defined()) {
        gys.push_back(grads[i].contiguous());
      } else {
        const int64_t mul = blocks[i * kBlockInts + 1], K = blocks[i * kBlockInts + 3];
        gys.push_back(at::zeros_symint({y.sym_size(0), K, mul}, y.options()));
      }
    }
    auto [gxs, gy, gbasis] = call_layer_backward(gys, xs, ts, saved[r], y, saved[r + 2],
                                                 saved[r + 3], saved[r + 4], saved[r + 5],
                                                 blocks);
    // one gradient per input of forward: xs (flattened by apply), nbr, y, basis,
    // coefficients, couplings, path_of_k, blocks
    torch::autograd::variable_list out(gxs.begin(), gxs.end());
    out.insert(out.end(), {at::Tensor(), gy, gbasis, at::Tensor(), at::Tensor(), at::Tensor(),
                           at::Tensor()});
    return out;
  }
};

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> uvu_tp_layer_autograd(
    at::TensorList xs, const at::Tensor& nbr, const at::Tensor& y, const at::Tensor& basis,
    const at::Tensor& coefficients, const at::Tensor& couplings, const at::Tensor& path_of_k,
    at::IntArrayRef blocks) {
  auto out = UvuTpLayerFunction::apply(xs, nbr, y, basis, coefficients, couplings, path_of_k,
                                       blocks);
  const auto half = out.begin() + static_cast<std::ptrdiff_t>(out.size() / 2);
  return {std::vector<at::Tensor>(out.begin(), half), std::vector<at::Tensor>(half, out.end())};
}

}  // namespace

TORCH_LIBRARY(facet, m) {
  m.def("uvu_tp_block(Tensor x, Tensor nbr, Tensor t, Tensor basis, Tensor c, "
        "Tensor path_of_k) -> Tensor");
  m.def("uvu_tp_block_backward(Tensor grad, Tensor x, Tensor nbr, Tensor t, Tensor basis, "
        "Tensor c, Tensor path_of_k) -> (Tensor, Tensor, Tensor)");
  m.def("uvu_tp_layer(Tensor[] xs, Tensor nbr, Tensor y, Tensor basis, Tensor coefficients, "
        "Tensor couplings, Tensor path_of_k, int[] blocks) -> (Tensor[], Tensor[])");
  m.def("uvu_tp_layer_backward(Tensor[] grads, Tensor[] xs, Tensor[] ts, Tensor nbr, Tensor y, "
        "Tensor basis, Tensor coefficients, Tensor couplings, Tensor path_of_k, int[] blocks) "
        "-> (Tensor[], Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(facet, CPU, m) {
  m.impl("uvu_tp_block", &uvu_tp_block);
  m.impl("uvu_tp_block_backward", &uvu_tp_block_backward);
  m.impl("uvu_tp_layer", &uvu_tp_layer);
  m.impl("uvu_tp_layer_backward", &uvu_tp_layer_backward);
}

TORCH_LIBRARY_IMPL(facet, Autograd, m) {
  m.impl("uvu_tp_block", &uvu_tp_block_autograd);
  m.impl("uvu_tp_block_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("uvu_tp_layer", &uvu_tp_layer_autograd);
  m.impl("uvu_tp_layer_backward", torch::autograd::autogradNotImplementedFallback());
}
