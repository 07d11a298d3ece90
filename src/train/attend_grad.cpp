// Backward of stage 4, the sparse gather attention with the sink. Per query
// (all heads share its keys, K = V) it recomputes the probabilities from q and
// the keys, then with dS = P ⊙ (dP − Δ), Δ = Σ_j P dP = dO · o:
//   dq = scale · dS K,   dK = scale · dSᵀ q + Pᵀ dO,   d sink = −p_sink Σ_j P dP
// as a few GEMMs of [H, W + k]. The key gradients of a block of queries are
// kept per query, then added into their rows by destination row, each in
// query order: no atomics, and the same sums for any thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/blas.h"
#include "ops/vec.h"
#include "train/grad.h"

namespace dsv4 {
namespace {

constexpr int64_t kQueryBlock = 32;  // queries whose key gradients are held at once

struct QueryKeys {
  int64_t lo = 0, n_window = 0;  // window rows lo .. lo + n_window - 1
  std::vector<int32_t> ids;      // compressed entries attended, ascending
};

// Query at position t (the tape's rows start at tape.p0, its kv rows at tape.kv0).
QueryKeys keys_of(const PackedLayer& p, const SeqTape& tape, int64_t t) {
  QueryKeys k;
  k.lo = std::max<int64_t>(0, t - p.c.sliding_window + 1);
  k.n_window = t - k.lo + 1;
  if (p.type == LayerType::hca) {
    k.ids.resize(static_cast<size_t>(std::min(tape.entries.rows(), (t + 1) / p.rate)));
    for (size_t i = 0; i < k.ids.size(); ++i) k.ids[i] = static_cast<int32_t>(i);
  } else if (p.type == LayerType::csa) {
    k.ids.resize(static_cast<size_t>(tape.width));  // the forward's gather, in its order
    k.ids.resize(
        static_cast<size_t>(selected_ids(tape.topk.data() + (t - tape.p0) * tape.width, tape.width, k.ids.data())));
  }
  return k;
}

// One query, all heads: dq_t [H, D], dsink_t [H], g [n, D] (window rows first).
void query_backward(const PackedLayer& p, const SeqTape& tape, const QueryKeys& k, const float* q_t, const float* do_t,
                    const float* delta_t, float* dq_t, float* dsink_t, float* g) {
  const int64_t hd = p.c.head_dim, h_n = p.c.num_attention_heads;
  const int64_t nw = k.n_window, n_e = static_cast<int64_t>(k.ids.size()), n = nw + n_e;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const float* win = tape.kv.data() + (k.lo - tape.kv0) * hd;
  // ds_p = [dS; P] and q_do = [q; dO] ([2H, n], [2H, D]): dK is then one GEMM over 2H.
  thread_local std::vector<float> ent, ds_p, q_do;
  ent.resize(static_cast<size_t>(n_e * hd));
  tape.entries.gather(k.ids.data(), n_e, ent.data());
  ds_p.resize(static_cast<size_t>(2 * h_n * n));
  q_do.resize(static_cast<size_t>(2 * h_n * hd));
  std::copy_n(q_t, h_n * hd, q_do.data());
  std::copy_n(do_t, h_n * hd, q_do.data() + h_n * hd);
  float* prob = ds_p.data() + h_n * n;
  float* dprob = ds_p.data();

  gemm_nt(2 * h_n, nw, hd, q_do.data(), hd, win, hd, ds_p.data(), n);  // dP (from dO) and logits (from q)
  gemm_nt(2 * h_n, n_e, hd, q_do.data(), hd, ent.data(), hd, ds_p.data() + nw, n);
  // rows 0..H-1 hold q·k, H..2H-1 dO·k: swap roles into place
  std::swap_ranges(ds_p.begin(), ds_p.begin() + h_n * n, ds_p.begin() + h_n * n);
  const float* sinks = p.w->sinks.ptr();
  for (int64_t h = 0; h < h_n; ++h) {
    float* pr = &prob[h * n];
    float* dp = &dprob[h * n];
    const float mx = vec::scale_max(pr, scale, n, sinks[h]);
    const float e_sink = std::exp(sinks[h] - mx), den = e_sink + vec::exp_sum(pr, n, mx);
    vec::scale(pr, 1.0f / den, n);
    const float dl = delta_t[h];
    dsink_t[h] = -(e_sink / den) * dl;
    for (int64_t j = 0; j < n; ++j) dp[j] = scale * pr[j] * (dp[j] - dl);  // dS, scaled
  }
  gemm_nn(h_n, hd, nw, dprob, n, win, hd, dq_t, hd);
  gemm_nn(h_n, hd, n_e, dprob + nw, n, ent.data(), hd, dq_t, hd, 1.0f);
  gemm_tn(n, hd, 2 * h_n, ds_p.data(), n, q_do.data(), hd, g, hd);  // scale·dSᵀq + Pᵀ dO
}

void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

// Key gradients of queries [b0, b1) (positions) into their rows: window rows by
// position (dkv's row 0 is position kv0), entries by id, each destination
// summing its queries in order.
void scatter(const PackedLayer& p, int64_t b0, int64_t b1, const std::vector<QueryKeys>& keys, const float* g,
             int64_t g_stride, int64_t kv0, float* dkv, float* dent) {
  const int64_t hd = p.c.head_dim, w = p.c.sliding_window;
  const int64_t r0 = std::max<int64_t>(0, b0 - w + 1);
#pragma omp parallel for schedule(static)
  for (int64_t r = r0; r < b1; ++r)
    for (int64_t t = std::max(r, b0); t < std::min(b1, r + w); ++t) {
      const QueryKeys& k = keys[t - b0];
      add(dkv + (r - kv0) * hd, &g[(t - b0) * g_stride + (r - k.lo) * hd], hd);
    }
  std::vector<std::pair<int32_t, int64_t>> uses;  // (entry, flat row in g), query order within an entry
  for (int64_t t = b0; t < b1; ++t) {
    const QueryKeys& k = keys[t - b0];
    for (size_t j = 0; j < k.ids.size(); ++j)
      uses.emplace_back(k.ids[j], (t - b0) * g_stride / hd + k.n_window + static_cast<int64_t>(j));
  }
  std::stable_sort(uses.begin(), uses.end(), [](auto& a, auto& b) { return a.first < b.first; });
  std::vector<size_t> runs;  // first use of each entry
  for (size_t i = 0; i < uses.size(); ++i)
    if (i == 0 || uses[i].first != uses[i - 1].first) runs.push_back(i);
  runs.push_back(uses.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t r = 0; r < static_cast<int64_t>(runs.size()) - 1; ++r)
    for (size_t i = runs[r]; i < runs[r + 1]; ++i) add(dent + uses[i].first * hd, &g[uses[i].second * hd], hd);
}

}  // namespace

void attend_backward(const PackedLayer& p, const SeqTape& tape, int64_t t0, int64_t t1, const float* q,
                     const float* d_o, const float* delta, float* dq, float* dsink, float* dkv, float* dent) {
  const int64_t hd = p.c.head_dim, h_n = p.c.num_attention_heads, ho = h_n * hd;
  const int64_t max_e = p.type == LayerType::csa ? tape.width : p.type == LayerType::hca ? tape.entries.rows() : 0;
  const int64_t g_stride = (p.c.sliding_window + max_e) * hd;
  // The calling thread's buffer, kept between calls (no new pages when warm);
  // the parallel regions below reach it through `g`, not as their own thread_local.
  thread_local std::vector<float> g_buf;
  g_buf.resize(static_cast<size_t>(std::min(kQueryBlock, t1 - t0) * g_stride));
  float* const g = g_buf.data();
  std::vector<QueryKeys> keys;
  for (int64_t b0 = t0; b0 < t1; b0 += kQueryBlock) {  // tape rows; positions from tape.p0
    const int64_t b1 = std::min(t1, b0 + kQueryBlock);
    keys.resize(static_cast<size_t>(b1 - b0));
#pragma omp parallel for schedule(dynamic)
    for (int64_t t = b0; t < b1; ++t) {
      const int64_t i = t - t0;
      keys[t - b0] = keys_of(p, tape, tape.p0 + t);
      query_backward(p, tape, keys[t - b0], q + i * ho, d_o + i * ho, delta + i * h_n, dq + i * ho, dsink + i * h_n,
                     &g[(t - b0) * g_stride]);
    }
    scatter(p, tape.p0 + b0, tape.p0 + b1, keys, g, g_stride, tape.kv0, dkv, dent);
  }
}

}  // namespace dsv4
