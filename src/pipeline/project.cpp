// Stage 1: projections. Everything that reads x is one GEMM against a packed
// weight, everything that reads c_q is another; norms and RoPE follow per row.
#include <cmath>
#include <cstring>

#include "ops/blas.h"
#include "ops/norm.h"
#include "ops/quant.h"
#include "ops/rope.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

// Appends w's tensor of spec s to m: as stored if the layer keeps it so, else its fp32 values.
void add(Matrix& m, const LayerWeights& w, const WeightSpec& s) {
  if (auto it = w.stored.find(s.name); it != w.stored.end())
    m.append(it->second);
  else
    m.append(weight(w, s.id));
}

}  // namespace

// The projections in table order, each appended to the fused matrix of its
// input: x-side rows [W_qa; W_kv; W_ckv; W_cg; W_Ikv; W_Ig; W_w], c_q-side
// rows [W_qb; W_Iqb], then o_a and o_b alone.
PackedLayer pack_layer(const Config& c, LayerType t, const LayerWeights& w, bool bf16) {
  PackedLayer p;
  p.c = c;
  p.type = t;
  p.rate = c.compress_rate(t);
  p.inv_freq = layer_inv_freq(c, t);
  p.w = &w;
  for (const WeightSpec& s : weight_specs(c, t)) {
    Matrix* m = s.role == WeightRole::x_projection    ? &p.w_in
                : s.role == WeightRole::cq_projection ? &p.w_up
                : s.id == WeightId::o_a_proj          ? &p.w_oa
                : s.id == WeightId::o_b_proj          ? &p.w_ob
                                                      : nullptr;
    if (!m) continue;
    p.row_of[size_t(s.id)] = m->rows;
    add(*m, w, s);
  }
  const auto at = [&](WeightId id) { return p.row_of[size_t(id)]; };
  p.n_in = p.w_in.rows, p.n_up = p.w_up.rows;
  p.off_kv = at(WeightId::kv_proj);
  p.off_comp_c = at(WeightId::compressor_kv_proj), p.off_comp_z = at(WeightId::compressor_gate_proj);
  p.off_index_c = at(WeightId::indexer_kv_proj), p.off_index_z = at(WeightId::indexer_gate_proj);
  p.off_index_w = at(WeightId::indexer_weights_proj);
  p.off_index_q = c.num_attention_heads * c.head_dim;  // after q's rows, with or without an indexer
  if (bf16)
    for (Matrix* m : {&p.w_in, &p.w_up, &p.w_oa, &p.w_ob}) m->to_bf16();
  return p;
}

void project(const PackedLayer& p, const float* x, int64_t rows, const int64_t* pos,
             const std::vector<RowGroup>& groups, Projected& out, bool queries) {
  const Config& c = p.c;
  const LayerWeights& w = *p.w;
  out.rows = rows;
  out.in.get(static_cast<size_t>(rows * p.n_in));
  linear(groups, p.n_in, x, c.hidden_size, p.w_in, 0, out.in.data(), p.n_in);

  const int64_t hd = c.head_dim, hi = c.index_n_heads;
  const float head_weight_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hi)));
#pragma omp parallel for schedule(static) if (rows > 1)  // decode: no region for one row
  for (int64_t r = 0; r < rows; ++r) {
    float* row = &out.in[r * p.n_in];
    norm_cq(p, row, row);
    rms_norm(row + p.off_kv, hd, w.kv_norm.ptr(), c.rms_norm_eps);
    RopeAngles(p.inv_freq, pos[r]).rotate(row + p.off_kv, 1, hd);
    if (w.indexer)
      for (int64_t h = 0; h < hi; ++h) row[p.off_index_w + h] *= head_weight_scale;
  }
  if (queries) project_queries(p, rows, pos, groups, out);
}

void project_queries(const PackedLayer& p, int64_t rows, const int64_t* pos, const std::vector<RowGroup>& groups,
                     Projected& out) {
  out.up.get(static_cast<size_t>(rows * p.n_up));
  linear(groups, p.n_up, out.in.data(), p.n_in, p.w_up, 0, out.up.data(), p.n_up);
  finish_queries(p, rows, pos, out, true, true);
}

void finish_queries(const PackedLayer& p, int64_t rows, const int64_t* pos, Projected& out, bool q, bool index) {
  const int64_t hi = p.c.index_n_heads, di = p.c.index_head_dim;
  index = index && p.w->indexer;
#pragma omp parallel for schedule(static) if (rows > 1)  // decode: no region for one row
  for (int64_t r = 0; r < rows; ++r) {
    float* row = &out.up[r * p.n_up];
    const RopeAngles rope(p.inv_freq, pos[r]);
    if (q) norm_rope_q(p, row, row, rope);
    if (index) rope.rotate(row + p.off_index_q, hi, di);
  }
}

float norm_cq(const PackedLayer& p, const float* raw, float* cq) {
  const int64_t rq = p.c.q_lora_rank;
  const float* w = p.w->q_a_norm.ptr();
  const float inv = rms_inv(raw, rq, p.c.rms_norm_eps);
  for (int64_t i = 0; i < rq; ++i) cq[i] = w[i] * (raw[i] * inv);
  return inv;
}

void norm_rope_q(const PackedLayer& p, const float* raw, float* q, const RopeAngles& rope, float* inv) {
  const int64_t hd = p.c.head_dim, h_n = p.c.num_attention_heads;
  for (int64_t h = 0; h < h_n; ++h) {
    const float* x = raw + h * hd;
    float* y = q + h * hd;
    const float s = rms_inv(x, hd, p.c.rms_norm_eps);
    for (int64_t i = 0; i < hd; ++i) y[i] = x[i] * s;
    if (inv) inv[h] = s;
  }
  rope.rotate(q, h_n, hd);
}

void round_index_queries(const PackedLayer& p, Projected& pr, int64_t rows) {
  const int64_t hi = p.c.index_n_heads, di = p.c.index_head_dim;
#pragma omp parallel for schedule(static) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < hi; ++h) {
      float* q = &pr.up[r * p.n_up + p.off_index_q + h * di];
      quant::hadamard(q, di);
      quant::fp4_qdq(q, di);
    }
}

}  // namespace dsv4
