#include "ops/blas.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/vec.h"

namespace dsv4 {
namespace {

// Fixed tiles: an element's tile never depends on the thread count, and each
// tile is one sgemm issued inside a parallel region, where OpenBLAS's OpenMP
// build runs single-threaded. So results are bit-identical for any number of
// threads. (No `if` clause: a one-thread team would not count as parallel.)
constexpr int64_t kTileM = 256, kTileN = 512;

// BLAS rejects K = 0 (lda < 1); the product is then just beta·C.
bool trivial(int64_t m, int64_t n, int64_t k, float* c, int64_t ldc, float beta) {
  if (m == 0 || n == 0) return true;
  if (k > 0) return false;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
  return true;
}

void tiled(bool b_transposed, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
           int64_t ldb, float* c, int64_t ldc, float beta) {
  if (trivial(m, n, k, c, ldc, beta)) return;
  const int64_t tm = (m + kTileM - 1) / kTileM, tn = (n + kTileN - 1) / kTileN;
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < tm * tn; ++t) {
    const int64_t i0 = (t / tn) * kTileM, j0 = (t % tn) * kTileN;
    const int64_t mi = std::min(kTileM, m - i0), nj = std::min(kTileN, n - j0);
    const float* bt = b_transposed ? b + j0 * ldb : b + j0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans, static_cast<blasint>(mi),
                static_cast<blasint>(nj), static_cast<blasint>(k), 1.0f, a + i0 * lda, static_cast<blasint>(lda), bt,
                static_cast<blasint>(ldb), beta, c + i0 * ldc + j0, static_cast<blasint>(ldc));
  }
}

// One dot product per element (vec::dot), tiles of 64 weight rows over the threads.
template <class B>
void rows_kernel(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const B* b, int64_t ldb, float* c,
                 int64_t ldc) {
  constexpr int64_t kRowsPerTile = 64;
  const int64_t tiles = (n + kRowsPerTile - 1) / kRowsPerTile;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t j = t * kRowsPerTile; j < std::min(n, (t + 1) * kRowsPerTile); ++j)
      for (int64_t i = 0; i < m; ++i) c[i * ldc + j] = vec::dot(a + i * lda, b + j * ldb, k);
}

}  // namespace

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta) {
  tiled(true, m, n, k, a, lda, b, ldb, c, ldc, beta);
}

void gemm_nt_rows(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc) {
  rows_kernel(m, n, k, a, lda, b, ldb, c, ldc);
}

void gemm_nt_rows_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                       float* c, int64_t ldc) {
  rows_kernel(m, n, k, a, lda, b, ldb, c, ldc);
}

void gemm_nt_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                  float* c, int64_t ldc) {
  if (trivial(m, n, k, c, ldc, 0.0f)) return;
  // Same fixed tiles as gemm_nt; each work item widens its [kTileN, K] slice of B once.
  const int64_t tm = (m + kTileM - 1) / kTileM, tn = (n + kTileN - 1) / kTileN;
#pragma omp parallel
  {
    thread_local std::vector<float> wide;
    int64_t have = -1;  // the B tile held in `wide`
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tm * tn; ++t) {
      const int64_t jt = t / tm, i0 = (t % tm) * kTileM, j0 = jt * kTileN;
      const int64_t mi = std::min(kTileM, m - i0), nj = std::min(kTileN, n - j0);
      if (have != jt) {
        wide.resize(static_cast<size_t>(nj * k));
        for (int64_t j = 0; j < nj; ++j)
          for (int64_t q = 0; q < k; ++q) wide[j * k + q] = vec::widen(b[(j0 + j) * ldb + q]);
        have = jt;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(mi), static_cast<blasint>(nj),
                  static_cast<blasint>(k), 1.0f, a + i0 * lda, static_cast<blasint>(lda), wide.data(),
                  static_cast<blasint>(k), 0.0f, c + i0 * ldc + j0, static_cast<blasint>(ldc));
    }
  }
}

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta) {
  tiled(false, m, n, k, a, lda, b, ldb, c, ldc, beta);
}

}  // namespace dsv4
