// Stage 1 for the backward: recomputed with the forward's helpers (norm_cq,
// norm_rope_q), then run backwards: RoPE's transpose (the inverse rotation),
// the norms' backward and the projections' GEMMs (BLAS).
#include "ops/blas.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "train/grad.h"

namespace dsv4 {

DenseWeights dense_weights(const PackedLayer& p) {
  DenseWeights d;
  d.n_raw = p.w->indexer ? p.off_index_c : p.n_in;
  d.raw = p.w_in.dense(0, d.n_raw, d.buf[0]);
  d.qb = p.w_up.dense(0, p.off_index_q, d.buf[1]);
  d.oa = p.w_oa.dense(0, p.w_oa.rows, d.buf[2]);
  d.ob = p.w_ob.dense(0, p.w_ob.rows, d.buf[3]);
  return d;
}

void project_recompute(const PackedLayer& p, int64_t n_raw, SeqGrads& s) {
  const Config& c = p.c;
  const int64_t n = n_raw, rq = c.q_lora_rank, len = s.len;
  s.raw.resize(static_cast<size_t>(len * n));
  linear(RowGroup{0, len, false}, n, s.x, c.hidden_size, p.w_in, 0, s.raw.data(), n);
  s.cq.resize(static_cast<size_t>(len * rq));
  s.inv_cq.resize(len), s.inv_kv.resize(len);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < len; ++t) {
    const float* r = &s.raw[t * n];
    s.inv_cq[t] = norm_cq(p, r, &s.cq[t * rq]);
    s.inv_kv[t] = rms_inv(r + p.off_kv, c.head_dim, c.rms_norm_eps);
  }
  s.draw.assign(static_cast<size_t>(len * n), 0.0f);
  s.dcq.assign(static_cast<size_t>(len * rq), 0.0f);
  s.dkv.assign(s.tape->kv.size(), 0.0f);
  s.dent.assign(static_cast<size_t>(s.tape->entries.rows() * c.head_dim), 0.0f);
  s.dsink.assign(static_cast<size_t>(len * c.num_attention_heads), 0.0f);
}

void project_q(const PackedLayer& p, const SeqGrads& s, int64_t t0, int64_t t1, QueryGrads& q) {
  const Config& c = p.c;
  const int64_t n = t1 - t0, h_n = c.num_attention_heads, ho = h_n * c.head_dim, rq = c.q_lora_rank;
  q.qraw.resize(static_cast<size_t>(n * ho));
  q.q.resize(static_cast<size_t>(n * ho));
  q.inv_q.resize(static_cast<size_t>(n * h_n));
  q.dq.resize(static_cast<size_t>(n * ho));
  linear(RowGroup{0, n, false}, ho, &s.cq[t0 * rq], rq, p.w_up, 0, q.qraw.data(), ho);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r)
    norm_rope_q(p, &q.qraw[r * ho], &q.q[r * ho], RopeAngles(p.inv_freq, s.tape->p0 + t0 + r), &q.inv_q[r * h_n]);
}

void project_q_backward(const PackedLayer& p, const DenseWeights& w, int64_t t0, int64_t t1, QueryGrads& q, SeqGrads& s,
                        LayerWeights& g) {
  const Config& c = p.c;
  const int64_t n = t1 - t0, hd = c.head_dim, h_n = c.num_attention_heads, ho = h_n * hd, rq = c.q_lora_rank;
  float* dqraw = q.q.data();  // q is not needed any more
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    RopeAngles(p.inv_freq, s.tape->p0 + t0 + r).rotate(&q.dq[r * ho], h_n, hd, true);
    for (int64_t h = 0; h < h_n; ++h)
      rms_norm_backward(&q.qraw[r * ho + h * hd], hd, q.inv_q[r * h_n + h], nullptr, &q.dq[r * ho + h * hd],
                        &dqraw[r * ho + h * hd]);
  }
  gemm_nn(n, rq, ho, dqraw, ho, w.qb, rq, &s.dcq[t0 * rq], rq);
  gemm_tn(ho, rq, n, dqraw, ho, &s.cq[t0 * rq], rq, g.q_b_proj.ptr(), rq, 1.0f);
}

namespace {

// kv = RoPE(RMSNorm_w(x W_kvᵀ)): its gradient from every query that read it.
void kv_backward(const PackedLayer& p, int64_t n_raw, SeqGrads& s, LayerWeights& g) {
  const int64_t hd = p.c.head_dim, n = n_raw;
  const float* norm = p.w->kv_norm.ptr();
  const int64_t p0 = s.tape->p0;
  float* dkv = &s.dkv[(p0 - s.tape->kv0) * hd];  // the sequence's own rows (a block's follow its window's)
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < s.len; ++t) {
    RopeAngles(p.inv_freq, p0 + t).rotate(&dkv[t * hd], 1, hd, true);
    rms_norm_backward(&s.raw[t * n + p.off_kv], hd, s.inv_kv[t], norm, &dkv[t * hd], &s.draw[t * n + p.off_kv]);
  }
  norm_weight_grad(s.len, hd, dkv, hd, &s.raw[p.off_kv], n, s.inv_kv.data(), g.kv_norm.ptr());
}

// c_q = RMSNorm_w(x W_qaᵀ).
void cq_backward(const PackedLayer& p, int64_t n_raw, SeqGrads& s, LayerWeights& g) {
  const int64_t rq = p.c.q_lora_rank, n = n_raw;
  const float* norm = p.w->q_a_norm.ptr();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < s.len; ++t)
    rms_norm_backward(&s.raw[t * n], rq, s.inv_cq[t], norm, &s.dcq[t * rq], &s.draw[t * n]);
  norm_weight_grad(s.len, rq, s.dcq.data(), rq, s.raw.data(), n, s.inv_cq.data(), g.q_a_norm.ptr());
}

}  // namespace

void project_backward(const PackedLayer& p, const DenseWeights& w, SeqGrads& s, float* dx, LayerWeights& g) {
  const Config& c = p.c;
  const int64_t d = c.hidden_size, n = w.n_raw;
  kv_backward(p, n, s, g);
  cq_backward(p, n, s, g);
  gemm_nn(s.len, d, n, s.draw.data(), n, w.raw, d, dx, d);
  // Each x-side weight but the indexer's (no gradient reaches it): its rows of draw.
  for (const WeightSpec& spec : weight_specs(c, p.type)) {
    if (spec.role != WeightRole::x_projection || spec.part == WeightPart::indexer) continue;
    Tensor& gw = weight(g, spec.id);
    gemm_tn(gw.dim(0), d, s.len, &s.draw[p.row_of[size_t(spec.id)]], n, s.x, d, gw.ptr(), d, 1.0f);
  }
}

}  // namespace dsv4
