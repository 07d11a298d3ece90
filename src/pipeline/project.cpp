// Stage 1: projections. Everything that reads x is one GEMM against a packed
// weight, everything that reads c_q is another; norms and RoPE follow per row.
#include <cmath>
#include <cstring>

#include "ops/blas.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

void append_rows(std::vector<float>& dst, const Tensor& w) { dst.insert(dst.end(), w.data.begin(), w.data.end()); }

}  // namespace

PackedLayer pack_layer(const Config& c, LayerType t, const LayerWeights& w) {
  PackedLayer p;
  p.c = c;
  p.type = t;
  p.rate = c.compress_rate(t);
  p.inv_freq = layer_inv_freq(c, t);
  p.w = &w;
  const int64_t d = c.hidden_size;
  append_rows(p.w_in, w.q_a_proj);
  p.off_kv = c.q_lora_rank;
  append_rows(p.w_in, w.kv_proj);
  int64_t cols = p.off_kv + c.head_dim;
  if (w.compressor) {
    p.off_cc = cols;
    append_rows(p.w_in, w.compressor->kv_proj);
    p.off_cz = p.off_cc + w.compressor->kv_proj.dim(0);
    append_rows(p.w_in, w.compressor->gate_proj);
    cols = p.off_cz + w.compressor->gate_proj.dim(0);
  }
  if (w.indexer) {
    const CompressorWeights& ic = w.indexer->compressor;
    p.off_ic = cols;
    append_rows(p.w_in, ic.kv_proj);
    p.off_iz = p.off_ic + ic.kv_proj.dim(0);
    append_rows(p.w_in, ic.gate_proj);
    p.off_w = p.off_iz + ic.gate_proj.dim(0);
    append_rows(p.w_in, w.indexer->weights_proj);
    cols = p.off_w + c.index_n_heads;
  }
  p.n_in = cols;
  (void)d;
  append_rows(p.w_up, w.q_b_proj);
  p.off_iq = c.num_attention_heads * c.head_dim;
  if (w.indexer) append_rows(p.w_up, w.indexer->q_b_proj);
  p.n_up = static_cast<int64_t>(p.w_up.size()) / c.q_lora_rank;
  return p;
}

void linear(const RowGroup& g, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
            float* c, int64_t ldc) {
  if (g.rowwise)
    gemm_nt_rows(g.rows, n, k, a + g.row0 * lda, lda, w, ldw, c + g.row0 * ldc, ldc);
  else
    gemm_nt(g.rows, n, k, a + g.row0 * lda, lda, w, ldw, c + g.row0 * ldc, ldc);
}

void project(const PackedLayer& p, const float* x, int64_t rows, const int64_t* pos, const std::vector<RowGroup>& groups,
             Projected& out) {
  const Config& c = p.c;
  const LayerWeights& w = *p.w;
  out.rows = rows;
  out.in.get(static_cast<size_t>(rows * p.n_in));
  out.up.get(static_cast<size_t>(rows * p.n_up));
  for (const RowGroup& g : groups)
    linear(g, p.n_in, c.hidden_size, x, c.hidden_size, p.w_in.data(), c.hidden_size, out.in.data(), p.n_in);

  const int64_t hd = c.head_dim, hi = c.index_n_heads, di = c.index_head_dim;
  const float head_weight_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hi)));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = &out.in[r * p.n_in];
    rms_norm(row, c.q_lora_rank, w.q_a_norm.ptr(), c.rms_norm_eps);
    rms_norm(row + p.off_kv, hd, w.kv_norm.ptr(), c.rms_norm_eps);
    rope_apply(row + p.off_kv, hd, p.inv_freq, pos[r]);
    if (w.indexer)
      for (int64_t h = 0; h < hi; ++h) row[p.off_w + h] *= head_weight_scale;
  }

  for (const RowGroup& g : groups)
    linear(g, p.n_up, c.q_lora_rank, out.in.data(), p.n_in, p.w_up.data(), c.q_lora_rank, out.up.data(), p.n_up);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = &out.up[r * p.n_up];
    std::vector<float> cs(p.inv_freq.size()), sn(p.inv_freq.size());
    rope_cos_sin(p.inv_freq, pos[r], cs.data(), sn.data());
    const int64_t rd = c.qk_rope_head_dim;
    for (int64_t h = 0; h < c.num_attention_heads; ++h) {
      float* qh = row + h * hd;
      rms_norm(qh, hd, nullptr, c.rms_norm_eps);
      rope_rotate(qh + hd - rd, rd, cs.data(), sn.data());
    }
    if (w.indexer)
      for (int64_t h = 0; h < hi; ++h) rope_rotate(row + p.off_iq + h * di + di - rd, rd, cs.data(), sn.data());
  }
}

}  // namespace dsv4
