// Stage 3 (CSA): the lightning indexer. Score of entry w for query t:
//   I[t, w] = Σ_h a[t, h] · ReLU(q_I[t, h] · K_I[w]) / sqrt(D_I)
// computed only for eligible entries (w < floor((t+1)/m)), then a partial
// selection of the k best (topk.cpp). Scores exist only per block of queries.
#include <algorithm>
#include <cmath>

#include <omp.h>

#include "ops/blas.h"
#include "ops/fp4_dot.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

constexpr int64_t kQueryBlock = 8;  // queries scored together
constexpr int64_t kKeyTile = 512;   // entries per GEMM tile

// FP4 keys: the integer form of the indexer queries of rows [row0, row0 + codes.size()).
struct QueryCodes {
  int64_t row0 = 0;
  std::vector<fp4dot::Query> codes;
  void encode(const PackedLayer& p, const Projected& pr, int64_t r0, int64_t rows, bool fp4) {
    row0 = r0;
    if (!fp4) return;
    if (p.c.index_n_heads > 1024) fail("fp4 indexer: more than 1024 index heads");
    codes.resize(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int64_t i = 0; i < rows; ++i)
      fp4dot::encode_query(&pr.up[(r0 + i) * p.n_up + p.off_index_q], p.c.index_n_heads, p.c.index_head_dim,
                           codes[static_cast<size_t>(i)]);
  }
};

// scores[i, w0..w0+nw) (row stride ld) for nb queries starting at row0. fp32
// keys: a query's heads are contiguous in pr.up, so this is nb GEMMs
// [H_I, D_I] x [nw, D_I]^T, then the ReLU-weighted sum over heads. FP4 keys
// (deployment): the integer block kernel on the packed rows with the queries'
// integer form q[row - q_row0]. Scores do not depend on how queries or tiles
// are grouped, so any chunking of a sequence selects the same entries.
void score_tile(const PackedLayer& p, const Projected& pr, int64_t row0, int64_t nb, const IndexKeys& keys,
                const QueryCodes& q, int64_t w0, int64_t nw, int64_t ld, float* scores, std::vector<float>& tile) {
  const int64_t hi = p.c.index_n_heads, di = p.c.index_head_dim;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(di)));
  if (keys.fp4) {
    float ah[1024];
    for (int64_t i = 0; i < nb; ++i) {
      const float* a = &pr.in[(row0 + i) * p.n_in + p.off_index_w];
      for (int64_t h = 0; h < hi; ++h) ah[h] = a[h] * scale;
      fp4dot::scores(q.codes[row0 + i - q.row0], ah, keys.fp4 + static_cast<size_t>(w0) * keys.row_bytes,
                     keys.row_bytes, nw, scores + i * ld + w0);
    }
    return;
  }
  tile.resize(static_cast<size_t>(nb * hi * kKeyTile));
  for (int64_t i = 0; i < nb; ++i)
    gemm_nt(hi, nw, di, &pr.up[(row0 + i) * p.n_up + p.off_index_q], di, keys.f32 + w0 * di, di, &tile[i * hi * nw],
            nw);
  for (int64_t i = 0; i < nb; ++i) {
    const float* a = &pr.in[(row0 + i) * p.n_in + p.off_index_w];
    float* s = scores + i * ld + w0;
    std::fill_n(s, nw, 0.0f);
    for (int64_t h = 0; h < hi; ++h) {
      const float* dots = &tile[(i * hi + h) * nw];
      const float ah = a[h] * scale;
      for (int64_t w = 0; w < nw; ++w) s[w] += ah * std::max(dots[w], 0.0f);
    }
  }
}

void score_block(const PackedLayer& p, const Projected& pr, int64_t row0, int64_t nb, const IndexKeys& keys,
                 const QueryCodes& q, int64_t n_cols, float* scores, std::vector<float>& tile) {
  for (int64_t w0 = 0; w0 < n_cols; w0 += kKeyTile)
    score_tile(p, pr, row0, nb, keys, q, w0, std::min(kKeyTile, n_cols - w0), n_cols, scores, tile);
}

}  // namespace

void index_topk(const PackedLayer& p, const Projected& pr, int64_t row0, int64_t rows, const int64_t* pos,
                const IndexKeys& keys, int64_t n_keys, int64_t width, int32_t* topk, double* score_s,
                double* select_s) {
  const int64_t m = p.c.compress_rate_csa, k = p.c.index_topk;
  thread_local QueryCodes q_tl;  // the caller's; the threads below share it by pointer
  q_tl.encode(p, pr, row0, rows, keys.fp4 != nullptr);
  const QueryCodes* qp = &q_tl;
  const int64_t n_blocks = (rows + kQueryBlock - 1) / kQueryBlock;
  const double start = omp_get_wtime();
  if (n_blocks == 1) {  // decode: one block of queries, so spread its key tiles over the threads
    const int64_t n_cols = std::min(n_keys, (pos[rows - 1] + 1) / m), n_tiles = (n_cols + kKeyTile - 1) / kKeyTile;
    thread_local std::vector<float> scores_tl;  // the caller's; the threads below share it by pointer
    scores_tl.resize(static_cast<size_t>(rows * std::max<int64_t>(n_cols, 1)));
    float* scores = scores_tl.data();
#pragma omp parallel
    {
      thread_local std::vector<float> tile;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < n_tiles; ++t)
        score_tile(p, pr, row0, rows, keys, *qp, t * kKeyTile, std::min(kKeyTile, n_cols - t * kKeyTile), n_cols,
                   scores, tile);
    }
    const double scored = omp_get_wtime();
    thread_local std::vector<int32_t> idx;
    for (int64_t i = 0; i < rows; ++i)
      select_topk_split(scores + i * n_cols, std::min(n_keys, (pos[i] + 1) / m), k, width, topk + i * width, idx);
    *score_s += scored - start;
    *select_s += omp_get_wtime() - scored;
    return;
  }
  double busy_score = 0, busy_select = 0;  // thread-seconds, to split the wall time
#pragma omp parallel reduction(+ : busy_score, busy_select)
  {
    thread_local std::vector<float> tile, scores;
    thread_local std::vector<int32_t> idx;
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t r0 = b * kQueryBlock, nb = std::min(kQueryBlock, rows - r0);
      // The block's last query sees the most entries; earlier ones ignore the surplus.
      const int64_t n_cols = std::min(n_keys, (pos[r0 + nb - 1] + 1) / m);
      scores.resize(static_cast<size_t>(nb * std::max<int64_t>(n_cols, 1)));
      const double t0 = omp_get_wtime();
      if (n_cols > 0) score_block(p, pr, row0 + r0, nb, keys, *qp, n_cols, scores.data(), tile);
      const double t1 = omp_get_wtime();
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t eligible = std::min(n_keys, (pos[r0 + i] + 1) / m);
        select_topk(scores.data() + i * n_cols, eligible, k, width, topk + (r0 + i) * width, idx);
      }
      busy_score += t1 - t0;
      busy_select += omp_get_wtime() - t1;
    }
  }
  const double wall = omp_get_wtime() - start, busy = busy_score + busy_select;
  *score_s += busy > 0 ? wall * busy_score / busy : 0;
  *select_s += busy > 0 ? wall * busy_select / busy : 0;
}

void index_scores_dense(const PackedLayer& p, const Projected& pr, int64_t row0, int64_t rows, const IndexKeys& keys,
                        int64_t n_keys, float* scores) {
  std::vector<float> tile;
  QueryCodes q;
  q.encode(p, pr, row0, rows, keys.fp4 != nullptr);
  for (int64_t r = 0; r < rows; r += kQueryBlock) {
    const int64_t nb = std::min(kQueryBlock, rows - r);
    if (n_keys > 0) score_block(p, pr, row0 + r, nb, keys, q, n_keys, scores + r * n_keys, tile);
  }
}

}  // namespace dsv4
