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

void project_recompute(const PackedLayer& p, int64_t n_raw, GroupGrads& gg) {
  const Config& c = p.c;
  const int64_t n = n_raw, rq = c.q_lora_rank, hd = c.head_dim, h_n = c.num_attention_heads, rows = gg.rows;
  int64_t ent_rows = 0, kv_size = 0;  // a block's kv rows start W-1 before its queries
  for (const SeqGrads& s : gg.seqs) ent_rows += s.tape->entries.rows(), kv_size += int64_t(s.tape->kv.size());
  gg.raw.resize(static_cast<size_t>(rows * n));
  linear(gg.blocks, n, gg.x, c.hidden_size, p.w_in, 0, gg.raw.data(), n);
  gg.cq.resize(static_cast<size_t>(rows * rq));
  gg.inv_cq.resize(rows), gg.inv_kv.resize(rows);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const float* r = &gg.raw[t * n];
    gg.inv_cq[t] = norm_cq(p, r, &gg.cq[t * rq]);
    gg.inv_kv[t] = rms_inv(r + p.off_kv, hd, c.rms_norm_eps);
  }
  gg.draw.assign(static_cast<size_t>(rows * n), 0.0f);
  gg.dcq.assign(static_cast<size_t>(rows * rq), 0.0f);
  gg.dkv.assign(static_cast<size_t>(kv_size), 0.0f);  // the tapes' kv rows
  gg.dent.assign(static_cast<size_t>(ent_rows * hd), 0.0f);
  gg.dsink.assign(static_cast<size_t>(rows * h_n), 0.0f);
  const auto view = [](std::vector<float>& v, int64_t at, int64_t len) {
    return std::span<float>(v.data() + at, static_cast<size_t>(len));
  };
  int64_t e0 = 0, k0 = 0;
  for (size_t i = 0; i < gg.seqs.size(); ++i) {
    SeqGrads& s = gg.seqs[i];
    const int64_t r0 = gg.blocks[i].row0, len = s.len, ne = s.tape->entries.rows();
    s.raw = view(gg.raw, r0 * n, len * n), s.draw = view(gg.draw, r0 * n, len * n);
    s.cq = view(gg.cq, r0 * rq, len * rq), s.dcq = view(gg.dcq, r0 * rq, len * rq);
    s.inv_cq = view(gg.inv_cq, r0, len), s.inv_kv = view(gg.inv_kv, r0, len);
    const int64_t kv = int64_t(s.tape->kv.size());
    s.dkv = view(gg.dkv, k0, kv), k0 += kv;
    s.dsink = view(gg.dsink, r0 * h_n, len * h_n);
    s.dent = view(gg.dent, e0 * hd, ne * hd), e0 += ne;
  }
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

void project_norms_backward(const PackedLayer& p, int64_t n_raw, SeqGrads& s, LayerWeights& g) {
  kv_backward(p, n_raw, s, g);
  cq_backward(p, n_raw, s, g);
}

void token_gemms_backward(const PackedLayer& p, const DenseWeights& w, const GroupGrads& gg, float* dx, LayerWeights& g,
                          bool with_ob) {
  const Config& c = p.c;
  const int64_t d = c.hidden_size, n = w.n_raw, gd = c.o_groups * c.o_lora_rank;
  std::vector<RowBlock> blocks;
  for (const RowGroup& b : gg.blocks) blocks.push_back({b.row0, b.rows});
  gemm_nn_blocks(blocks, d, n, gg.draw.data(), n, w.raw, d, dx, d);
  // Each x-side weight but the indexer's (no gradient reaches it): its rows of
  // draw against x; and o_b's: dy against the saved grouped projection.
  std::vector<TnSum> sums;
  for (const WeightSpec& spec : weight_specs(c, p.type)) {
    if (spec.role != WeightRole::x_projection || spec.part == WeightPart::indexer) continue;
    Tensor& gw = weight(g, spec.id);
    TnSum& sum = sums.emplace_back(TnSum{gw.dim(0), d, gw.ptr(), d, {}});
    for (const RowGroup& b : gg.blocks)
      sum.terms.push_back({b.rows, &gg.draw[b.row0 * n + p.row_of[size_t(spec.id)]], n, gg.x + b.row0 * d, d});
  }
  if (with_ob) {
    TnSum& ob = sums.emplace_back(TnSum{d, gd, g.o_b_proj.ptr(), gd, {}});
    for (size_t i = 0; i < gg.seqs.size(); ++i)
      ob.terms.push_back({gg.seqs[i].len, gg.dy + gg.blocks[i].row0 * d, d, gg.seqs[i].tape->grouped.data(), gd});
  }
  gemm_tn_sums(sums);
}

void output_weight_backward(const PackedLayer& p, const SeqGrads& s, LayerWeights& g) {
  const int64_t d = p.c.hidden_size, gd = p.c.o_groups * p.c.o_lora_rank;
  gemm_tn_sums({TnSum{d, gd, g.o_b_proj.ptr(), gd, {{s.len, s.dy, d, s.tape->grouped.data(), gd}}}});
}

}  // namespace dsv4
