// The one place that talks to BLAS. C[M,N] = A[M,K] · B[N,K]^T (+ beta·C):
// the layout of a linear layer with a checkpoint weight [out, in].
#pragma once
#include <cstdint>
#include <vector>

#include "dsv4/dtype.h"

namespace dsv4 {

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta = 0.0f);
// Row-invariant C = A·B^T: each element is one dot product in a fixed order
// over K, so a row's result never depends on the other rows of the call (BLAS
// rounds a row differently depending on M). Streams B once: the decode kernel.
void gemm_nt_rows(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc);

// Rows of a weight matrix in their stored dtype (F32, BF16, F16 or F8_E4M3).
// FP8 rows carry the checkpoint's scale per 128x128 block (weight = code's
// value × scale); row r's scales start at scale + ((row_base + r) / 128) · scale_ld.
struct WeightRows {
  DType dtype = DType::F32;
  const void* data = nullptr;  // row 0
  int64_t ld = 0;              // elements per row
  const float* scale = nullptr;
  int64_t scale_ld = 0, row_base = 0;
};
// The same two kernels over stored weights: the row-invariant one converts in
// registers; the BLAS one widens one [512, K] tile of B at a time into
// per-thread scratch and runs the same sgemm tiles. Either gives the result of
// the fp32 kernel on the dequantised weights, bit for bit.
void gemm_nt_w(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const WeightRows& b, float* c,
               int64_t ldc);
void gemm_nt_rows_w(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const WeightRows& b, float* c,
                    int64_t ldc);
// gemm_nt_w of several row blocks of A and C (block: rows [row0, row0 + rows))
// in one parallel region. Each block is cut into the tiles gemm_nt_w of it
// alone uses (from its first row), so each gets the bits of a call of its own
// — BLAS rounds a row by the tile it is in — while the threads share the
// tiles of all blocks (packed documents: one GEMM, per-document bits).
struct RowBlock {
  int64_t row0 = 0, rows = 0;
};
void gemm_nt_w_blocks(const std::vector<RowBlock>& blocks, int64_t n, int64_t k, const float* a, int64_t lda,
                      const WeightRows& b, float* c, int64_t ldc);
// Columns [j0, j1) of gemm_nt_rows_w, on the calling thread (callers that
// spread the tiles of several matrices over one parallel region).
constexpr int64_t kRowsPerTile = 64;
void gemm_nt_rows_w_range(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                          const WeightRows& b, float* c, int64_t ldc);
// C[M,N] = A[M,K] · B[K,N]
void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta = 0.0f);
// gemm_nn of several row blocks of A and C in one parallel region, each block
// cut into the tiles gemm_nn of it alone uses: each keeps its own bits.
void gemm_nn_blocks(const std::vector<RowBlock>& blocks, int64_t n, int64_t k, const float* a, int64_t lda,
                    const float* b, int64_t ldb, float* c, int64_t ldc);
// C[M,N] = A[K,M]^T · B[K,N] (+ beta·C): weight gradients, a sum over the K tokens
// in BLAS's order within one fixed tile, so independent of the thread count.
void gemm_tn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta = 0.0f);
// Sums of products: c += Σ_j a_jᵀ b_j for each sum, the terms j added in order,
// each exactly gemm_tn(m, n, k_j, a_j, lda_j, b_j, ldb_j, c, ldc, 1) — the same
// tiles — while the tiles of all the sums share one parallel region (weight
// gradients of several weights over several sequences).
struct TnTerm {
  int64_t k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
};
struct TnSum {
  int64_t m = 0, n = 0;
  float* c = nullptr;
  int64_t ldc = 0;
  std::vector<TnTerm> terms;
};
void gemm_tn_sums(const std::vector<TnSum>& sums);
// The n rows of b widened to fp32 [n, k] (the values the kernels multiply by).
void widen_rows(const WeightRows& b, int64_t n, int64_t k, float* out);

}  // namespace dsv4
