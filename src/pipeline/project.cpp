// Stage 1: projections. Everything that reads x is one GEMM against a packed
// weight, everything that reads c_q is another; norms and RoPE follow per row.
#include <cmath>
#include <cstring>

#include "io/dtype.h"
#include "ops/blas.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

}  // namespace

void Matrix::append(const Tensor& w) {
  cols = w.dim(1);
  rows += w.dim(0);
  f32.insert(f32.end(), w.data.begin(), w.data.end());
}

void Matrix::to_bf16() {
  bf16.resize(f32.size());
  for (size_t i = 0; i < f32.size(); ++i) bf16[i] = f32_to_bf16(f32[i]);
  std::vector<float>().swap(f32);
}

PackedLayer pack_layer(const Config& c, LayerType t, const LayerWeights& w, bool bf16) {
  PackedLayer p;
  p.c = c;
  p.type = t;
  p.rate = c.compress_rate(t);
  p.inv_freq = layer_inv_freq(c, t);
  p.w = &w;
  p.w_in.append(w.q_a_proj);
  p.off_kv = c.q_lora_rank;
  p.w_in.append(w.kv_proj);
  int64_t cols = p.off_kv + c.head_dim;
  if (w.compressor) {
    p.off_cc = cols;
    p.w_in.append(w.compressor->kv_proj);
    p.off_cz = p.off_cc + w.compressor->kv_proj.dim(0);
    p.w_in.append(w.compressor->gate_proj);
    cols = p.off_cz + w.compressor->gate_proj.dim(0);
  }
  if (w.indexer) {
    const CompressorWeights& ic = w.indexer->compressor;
    p.off_ic = cols;
    p.w_in.append(ic.kv_proj);
    p.off_iz = p.off_ic + ic.kv_proj.dim(0);
    p.w_in.append(ic.gate_proj);
    p.off_w = p.off_iz + ic.gate_proj.dim(0);
    p.w_in.append(w.indexer->weights_proj);
    cols = p.off_w + c.index_n_heads;
  }
  p.n_in = cols;
  p.w_up.append(w.q_b_proj);
  p.off_iq = c.num_attention_heads * c.head_dim;
  if (w.indexer) p.w_up.append(w.indexer->q_b_proj);
  p.n_up = p.w_up.rows;
  p.w_oa.append(w.o_a_proj);
  p.w_ob.append(w.o_b_proj);
  if (bf16)
    for (Matrix* m : {&p.w_in, &p.w_up, &p.w_oa, &p.w_ob}) m->to_bf16();
  return p;
}

void linear(const RowGroup& g, int64_t n, const float* a, int64_t lda, const Matrix& w, int64_t w_row0, float* c,
            int64_t ldc) {
  const int64_t k = w.cols;
  a += g.row0 * lda;
  c += g.row0 * ldc;
  if (!w.bf16.empty()) {
    const uint16_t* b = w.bf16.data() + w_row0 * k;
    g.rowwise ? gemm_nt_rows_bf16(g.rows, n, k, a, lda, b, k, c, ldc) : gemm_nt_bf16(g.rows, n, k, a, lda, b, k, c, ldc);
    return;
  }
  const float* b = w.f32.data() + w_row0 * k;
  g.rowwise ? gemm_nt_rows(g.rows, n, k, a, lda, b, k, c, ldc) : gemm_nt(g.rows, n, k, a, lda, b, k, c, ldc);
}

void project(const PackedLayer& p, const float* x, int64_t rows, const int64_t* pos, const std::vector<RowGroup>& groups,
             Projected& out) {
  const Config& c = p.c;
  const LayerWeights& w = *p.w;
  out.rows = rows;
  out.in.get(static_cast<size_t>(rows * p.n_in));
  out.up.get(static_cast<size_t>(rows * p.n_up));
  for (const RowGroup& g : groups)
    linear(g, p.n_in, x, c.hidden_size, p.w_in, 0, out.in.data(), p.n_in);

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
    linear(g, p.n_up, out.in.data(), p.n_in, p.w_up, 0, out.up.data(), p.n_up);
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
