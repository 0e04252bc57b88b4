// Row-major matrix products for facet/ops' kernels: the BLAS of the libtorch they link (MKL in
// x86 wheels, OpenBLAS elsewhere), called directly (an at::mm call costs a dispatch and a
// tensor per product: too much for the small per-atom products of the kernels).
#pragma once

#include <ATen/ATen.h>

#include <type_traits>

// Fortran BLAS of the libtorch this links; weak: a libtorch without them falls back to at::mm
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
}

namespace facet_blas {

// Row-major C [m, n] = alpha op(A) [m, k] @ op(B) [k, n] + beta C; lda, ldb, ldc row strides
// (op(A) = A^T when ta: A is then stored [k, m]). beta = 0 ignores what C holds.
template <typename T>
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                 const T* b, int64_t ldb, T* c, int64_t ldc, T alpha = T(1), T beta = T(0)) {
  if (m == 0 || n == 0) return;
  // column-major view: C^T [n, m] = op(B)^T [n, k] @ op(A)^T [k, m]
  const char na = tb ? 'T' : 'N', nb = ta ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LA = static_cast<int>(ldb), LB = static_cast<int>(lda), LC = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) {
      sgemm_(&na, &nb, &M, &N, &K, &alpha, b, &LA, a, &LB, &beta, c, &LC);
      return;
    }
  } else {
    if (dgemm_) {
      dgemm_(&na, &nb, &M, &N, &K, &alpha, b, &LA, a, &LB, &beta, c, &LC);
      return;
    }
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto A = at::from_blob(const_cast<T*>(a), {ta ? k : m, ta ? m : k}, {lda, 1}, opts);
  auto B = at::from_blob(const_cast<T*>(b), {tb ? n : k, tb ? k : n}, {ldb, 1}, opts);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(C, ta ? A.t() : A, tb ? B.t() : B);
    if (alpha != T(1)) C.mul_(alpha);
  } else {
    C.addmm_(ta ? A.t() : A, tb ? B.t() : B, beta, alpha);
  }
}

}  // namespace facet_blas
