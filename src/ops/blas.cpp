#include "ops/blas.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "ops/vec.h"
#include "ops/weight_decode.h"

namespace dsv4 {
namespace {

// Fixed tiles: an element's tile never depends on the thread count, and each
// tile is one sgemm issued inside a parallel region, where OpenBLAS's OpenMP
// build runs single-threaded. So results are bit-identical for any number of
// threads. (No `if` clause: a one-thread team would not count as parallel.)
constexpr int64_t kTileM = 256, kTileN = 512;
constexpr int64_t kTileTn = 1024;  // gemm_tn

// BLAS rejects K = 0 (lda < 1); the product is then just beta·C.
bool trivial(int64_t m, int64_t n, int64_t k, float* c, int64_t ldc, float beta) {
  if (m == 0 || n == 0) return true;
  if (k > 0) return false;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
  return true;
}

void tiled(bool a_transposed, bool b_transposed, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float* c, int64_t ldc, float beta, int64_t kTileM = dsv4::kTileM,
           int64_t kTileN = dsv4::kTileN) {
  if (trivial(m, n, k, c, ldc, beta)) return;
  const int64_t tm = (m + kTileM - 1) / kTileM, tn = (n + kTileN - 1) / kTileN;
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < tm * tn; ++t) {
    const int64_t i0 = (t / tn) * kTileM, j0 = (t % tn) * kTileN;
    const int64_t mi = std::min(kTileM, m - i0), nj = std::min(kTileN, n - j0);
    const float* at = a_transposed ? a + i0 : a + i0 * lda;
    const float* bt = b_transposed ? b + j0 * ldb : b + j0;
    cblas_sgemm(CblasRowMajor, a_transposed ? CblasTrans : CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans,
                static_cast<blasint>(mi), static_cast<blasint>(nj), static_cast<blasint>(k), 1.0f, at,
                static_cast<blasint>(lda), bt, static_cast<blasint>(ldb), beta, c + i0 * ldc + j0,
                static_cast<blasint>(ldc));
  }
}

template <class Row>
void widen_row(const Row& r, int64_t k, float* out) {
  int64_t q = 0;
#ifdef DSV4_AVX2
  for (; q + 8 <= k; q += 8) _mm256_storeu_ps(out + q, r.load8(q));
#endif
  for (; q < k; ++q) out[q] = r.at(q);
}

// The blocks' row tiles: (first row, rows), kTileM rows from each block's first.
std::vector<std::pair<int64_t, int64_t>> row_tiles(const std::vector<RowBlock>& blocks) {
  std::vector<std::pair<int64_t, int64_t>> t;
  for (const RowBlock& b : blocks)
    for (int64_t i = 0; i < b.rows; i += kTileM) t.emplace_back(b.row0 + i, std::min(kTileM, b.rows - i));
  return t;
}

// gemm_nt's tiles over widened weights: each work item widens its [kTileN, K]
// slice of B once (consecutive items of a thread share it).
template <class RowOf>
void widened_tiles(const std::vector<std::pair<int64_t, int64_t>>& rt, int64_t n, int64_t k, const float* a,
                   int64_t lda, RowOf row, float* c, int64_t ldc) {
  const int64_t tm = static_cast<int64_t>(rt.size()), tn = (n + kTileN - 1) / kTileN;
#pragma omp parallel
  {
    thread_local std::vector<float> wide;
    int64_t have = -1;  // the B tile held in `wide`
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tm * tn; ++t) {
      const int64_t jt = t / tm, i0 = rt[t % tm].first, mi = rt[t % tm].second, j0 = jt * kTileN;
      const int64_t nj = std::min(kTileN, n - j0);
      if (have != jt) {
        wide.resize(static_cast<size_t>(nj * k));
        for (int64_t j = 0; j < nj; ++j) widen_row(row(j0 + j), k, &wide[j * k]);
        have = jt;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(mi), static_cast<blasint>(nj),
                  static_cast<blasint>(k), 1.0f, a + i0 * lda, static_cast<blasint>(lda), wide.data(),
                  static_cast<blasint>(k), 0.0f, c + i0 * ldc + j0, static_cast<blasint>(ldc));
    }
  }
}

// fp32 weights: the tiles of gemm_nt (tiled), over the blocks' row tiles.
void f32_tiles(const std::vector<std::pair<int64_t, int64_t>>& rt, int64_t n, int64_t k, const float* a, int64_t lda,
               const float* b, int64_t ldb, float* c, int64_t ldc) {
  const int64_t tm = static_cast<int64_t>(rt.size()), tn = (n + kTileN - 1) / kTileN;
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < tm * tn; ++t) {
    const int64_t i0 = rt[t / tn].first, mi = rt[t / tn].second, j0 = (t % tn) * kTileN;
    const int64_t nj = std::min(kTileN, n - j0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(mi), static_cast<blasint>(nj),
                static_cast<blasint>(k), 1.0f, a + i0 * lda, static_cast<blasint>(lda), b + j0 * ldb,
                static_cast<blasint>(ldb), 0.0f, c + i0 * ldc + j0, static_cast<blasint>(ldc));
  }
}

}  // namespace

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta) {
  tiled(false, true, m, n, k, a, lda, b, ldb, c, ldc, beta);
}

void gemm_nt_w(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const WeightRows& b, float* c,
               int64_t ldc) {
  gemm_nt_w_blocks({RowBlock{0, m}}, n, k, a, lda, b, c, ldc);
}

void gemm_nt_w_blocks(const std::vector<RowBlock>& blocks, int64_t n, int64_t k, const float* a, int64_t lda,
                      const WeightRows& b, float* c, int64_t ldc) {
  bool all_trivial = true;
  for (const RowBlock& r : blocks) all_trivial = trivial(r.rows, n, k, c + r.row0 * ldc, ldc, 0.0f) && all_trivial;
  if (all_trivial) return;
  const std::vector<std::pair<int64_t, int64_t>> rt = row_tiles(blocks);
  if (b.dtype == DType::F32) return f32_tiles(rt, n, k, a, lda, static_cast<const float*>(b.data), b.ld, c, ldc);
  vec::with_rows(b, [&](auto row) { widened_tiles(rt, n, k, a, lda, row, c, ldc); });
}

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta) {
  tiled(false, false, m, n, k, a, lda, b, ldb, c, ldc, beta);
}

void gemm_tn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta) {
  // Weight gradients are large outputs over a short K (a chunk of tokens):
  // bigger tiles pack each operand panel fewer times.
  tiled(true, false, m, n, k, a, lda, b, ldb, c, ldc, beta, kTileTn, kTileTn);
}

void gemm_nn_blocks(const std::vector<RowBlock>& blocks, int64_t n, int64_t k, const float* a, int64_t lda,
                    const float* b, int64_t ldb, float* c, int64_t ldc) {
  bool all_trivial = true;
  for (const RowBlock& r : blocks) all_trivial = trivial(r.rows, n, k, c + r.row0 * ldc, ldc, 0.0f) && all_trivial;
  if (all_trivial) return;
  const std::vector<std::pair<int64_t, int64_t>> rt = row_tiles(blocks);
  const int64_t tm = static_cast<int64_t>(rt.size()), tn = (n + kTileN - 1) / kTileN;
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < tm * tn; ++t) {  // tiled()'s tiles of each block
    const int64_t i0 = rt[t / tn].first, mi = rt[t / tn].second, j0 = (t % tn) * kTileN;
    const int64_t nj = std::min(kTileN, n - j0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(mi), static_cast<blasint>(nj),
                static_cast<blasint>(k), 1.0f, a + i0 * lda, static_cast<blasint>(lda), b + j0,
                static_cast<blasint>(ldb), 0.0f, c + i0 * ldc + j0, static_cast<blasint>(ldc));
  }
}

void gemm_tn_sums(const std::vector<TnSum>& sums) {
  struct Item {
    size_t sum;
    int64_t i0, j0, mi, nj;
    double work;
  };
  std::vector<Item> items;  // gemm_tn's tiles of every sum
  for (size_t s = 0; s < sums.size(); ++s) {
    double k = 0;
    for (const TnTerm& t : sums[s].terms) k += static_cast<double>(t.k);
    for (int64_t i0 = 0; i0 < sums[s].m; i0 += kTileTn)
      for (int64_t j0 = 0; j0 < sums[s].n; j0 += kTileTn) {
        const int64_t mi = std::min(kTileTn, sums[s].m - i0), nj = std::min(kTileTn, sums[s].n - j0);
        items.push_back({s, i0, j0, mi, nj, k * static_cast<double>(mi * nj)});
      }
  }
  // Biggest first, for the dynamic schedule's balance; items write disjoint tiles.
  std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) { return x.work > y.work; });
#pragma omp parallel for schedule(dynamic)
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& m = items[it];
    const TnSum& s = sums[m.sum];
    for (const TnTerm& t : s.terms) {
      if (t.k == 0) continue;  // gemm_tn with beta = 1 and k = 0 leaves c as it is
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<blasint>(m.mi), static_cast<blasint>(m.nj),
                  static_cast<blasint>(t.k), 1.0f, t.a + m.i0, static_cast<blasint>(t.lda), t.b + m.j0,
                  static_cast<blasint>(t.ldb), 1.0f, s.c + m.i0 * s.ldc + m.j0, static_cast<blasint>(s.ldc));
    }
  }
}

void widen_rows(const WeightRows& b, int64_t n, int64_t k, float* out) {
  vec::with_rows(b, [&](auto row) {
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n; ++j) widen_row(row(j), k, out + j * k);
  });
}

}  // namespace dsv4
