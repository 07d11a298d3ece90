// The one place that talks to BLAS. C[M,N] = A[M,K] · B[N,K]^T (+ beta·C):
// the layout of a linear layer with a checkpoint weight [out, in].
#pragma once
#include <cstdint>

namespace dsv4 {

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta = 0.0f);
// Row-invariant C = A·B^T: each element is one dot product in a fixed order
// over K, so a row's result never depends on the other rows of the call (BLAS
// rounds a row differently depending on M). Streams B once: the decode kernel.
void gemm_nt_rows(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc);
// The same two with B in bf16 (weights kept at half size): the row-invariant
// kernel converts on the fly; the BLAS one converts one tile of B to fp32 at a time.
void gemm_nt_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                  float* c, int64_t ldc);
void gemm_nt_rows_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                       float* c, int64_t ldc);
// C[M,N] = A[M,K] · B[K,N]
void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float beta = 0.0f);

}  // namespace dsv4
