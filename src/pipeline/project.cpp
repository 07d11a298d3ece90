// Stage 1: projections. Everything that reads x is one GEMM against a packed
// weight, everything that reads c_q is another; norms and RoPE follow per row.
#include <cmath>
#include <cstring>

#include "common/dtype.h"
#include "ops/blas.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

// Appends the weight `name` to m: as stored if the layer keeps it so, else its fp32 tensor.
void add(Matrix& m, const LayerWeights& w, const char* name, const Tensor& t) {
  if (auto it = w.stored.find(name); it != w.stored.end())
    m.append(it->second);
  else
    m.append(t);
}

}  // namespace

PackedLayer pack_layer(const Config& c, LayerType t, const LayerWeights& w, bool bf16) {
  PackedLayer p;
  p.c = c;
  p.type = t;
  p.rate = c.compress_rate(t);
  p.inv_freq = layer_inv_freq(c, t);
  p.w = &w;
  add(p.w_in, w, "q_a_proj.weight", w.q_a_proj);
  p.off_kv = c.q_lora_rank;
  add(p.w_in, w, "kv_proj.weight", w.kv_proj);
  int64_t cols = p.off_kv + c.head_dim;
  if (w.compressor) {
    const int64_t in_w = t == LayerType::csa ? 2 * c.head_dim : c.head_dim;
    p.off_cc = cols;
    add(p.w_in, w, "compressor.kv_proj.weight", w.compressor->kv_proj);
    p.off_cz = p.off_cc + in_w;
    add(p.w_in, w, "compressor.gate_proj.weight", w.compressor->gate_proj);
    cols = p.off_cz + in_w;
  }
  if (w.indexer) {
    const CompressorWeights& ic = w.indexer->compressor;
    const int64_t in_w = 2 * c.index_head_dim;
    p.off_ic = cols;
    add(p.w_in, w, "compressor.indexer.kv_proj.weight", ic.kv_proj);
    p.off_iz = p.off_ic + in_w;
    add(p.w_in, w, "compressor.indexer.gate_proj.weight", ic.gate_proj);
    p.off_w = p.off_iz + in_w;
    add(p.w_in, w, "compressor.indexer.scorer.weights_proj.weight", w.indexer->weights_proj);
    cols = p.off_w + c.index_n_heads;
  }
  p.n_in = cols;
  add(p.w_up, w, "q_b_proj.weight", w.q_b_proj);
  p.off_iq = c.num_attention_heads * c.head_dim;
  if (w.indexer) add(p.w_up, w, "compressor.indexer.q_b_proj.weight", w.indexer->q_b_proj);
  p.n_up = p.w_up.rows;
  add(p.w_oa, w, "o_a_proj.weight", w.o_a_proj);
  add(p.w_ob, w, "o_b_proj.weight", w.o_b_proj);
  if (bf16)
    for (Matrix* m : {&p.w_in, &p.w_up, &p.w_oa, &p.w_ob}) m->to_bf16();
  return p;
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
