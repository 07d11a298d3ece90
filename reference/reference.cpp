// Straight loops over attention.md, one sequence at a time. Accumulates in
// double so that it sits closer to the exact result than any fp32 fast path.
// Deployment numerics round at the points official_numerics.md names (a
// non-null Rounder; the roundings themselves are fp32 as the spec fixes them).
#include "reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common.h"
#include "numerics.h"

namespace dsv4::reference {
namespace {

using Mat = std::vector<float>;  // row-major

using detail::rms_norm;
using detail::rope;

Mat linear(const float* x, int64_t rows, const Tensor& w) {
  return detail::linear(x, rows, w.ptr(), w.dim(0), w.dim(1));
}

// Compressed entries of a whole sequence: [S / r, width]. `overlap` = CSA
// pooling over 2r slots (series A of window w-1, series B of window w).
// `round`: deployment numerics, with `r` RoPE dims (main entries) or r = -1 (indexer keys).
Mat compress(const float* x, int64_t s_len, const CompressorWeights& cw, int64_t rate, int64_t width, bool overlap,
             double eps, const std::vector<float>& freq, Rounder* round, int64_t r) {
  const Mat cv = linear(x, s_len, cw.kv_proj), z = linear(x, s_len, cw.gate_proj);
  const int64_t in_w = overlap ? 2 * width : width, n_entries = s_len / rate;
  const float* bias = cw.position_bias.ptr();
  Mat e(static_cast<size_t>(n_entries * width));
  for (int64_t w = 0; w < n_entries; ++w) {
    for (int64_t ch = 0; ch < width; ++ch) {
      std::vector<std::pair<float, float>> slots;  // (logit, value)
      for (const detail::Slot& sl : detail::pool_slots(w, ch, rate, width, overlap))
        slots.emplace_back(z[sl.tok * in_w + sl.col] + bias[sl.row * in_w + sl.col], cv[sl.tok * in_w + sl.col]);
      double mx = -INFINITY, den = 0, num = 0;
      for (auto& [l, v] : slots) mx = std::max(mx, static_cast<double>(l));
      for (auto& [l, v] : slots) {
        const double p = std::exp(l - mx);
        den += p;
        num += p * v;
      }
      e[w * width + ch] = static_cast<float>(num / den);
    }
    rms_norm(&e[w * width], width, cw.kv_norm.ptr(), eps);
    rope(&e[w * width], width, freq, w * rate, +1);
    if (round && r >= 0) round->kv_row(&e[w * width], width, r, cw.kv_norm.ptr());
    if (round && r < 0) round->index_vec(&e[w * width], width);
  }
  return e;
}

struct Indexed {
  Mat q, keys, scores;                     // [S, H_I*D_I], [T, D_I], [S, T]
  std::vector<std::vector<int64_t>> topk;  // per query, best first
};

Indexed run_indexer(const Config& c, const LayerWeights& w, const float* x, const Mat& c_q, int64_t s_len,
                    const std::vector<float>& freq, Rounder* round) {
  const int64_t hi = c.index_n_heads, di = c.index_head_dim, m = c.compress_rate_csa;
  Indexed ix;
  ix.keys = compress(x, s_len, w.indexer->compressor, m, di, true, c.rms_norm_eps, freq, round, -1);
  ix.q = linear(c_q.data(), s_len, w.indexer->q_b_proj);
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t h = 0; h < hi; ++h) {
      rope(&ix.q[(t * hi + h) * di], di, freq, t, +1);
      if (round) round->index_vec(&ix.q[(t * hi + h) * di], di);
    }
  const Mat a = linear(x, s_len, w.indexer->weights_proj);
  const int64_t n_t = s_len / m;
  ix.scores.assign(static_cast<size_t>(s_len * n_t), 0.0f);
  for (int64_t t = 0; t < s_len; ++t) {
    for (int64_t e = 0; e < n_t; ++e) {
      double score = 0;
      for (int64_t h = 0; h < hi; ++h) {
        double dot = 0;
        for (int64_t i = 0; i < di; ++i) dot += static_cast<double>(ix.q[(t * hi + h) * di + i]) * ix.keys[e * di + i];
        score += a[t * hi + h] / std::sqrt(static_cast<double>(hi)) * std::max(dot, 0.0) / std::sqrt(double(di));
      }
      ix.scores[t * n_t + e] = static_cast<float>(score);
    }
    std::vector<int64_t> eligible((t + 1) / m);  // entries whose window is complete
    std::iota(eligible.begin(), eligible.end(), 0);
    // Stable: equal scores keep the lower entry index first, the fast path's rule (docs/numerics.md, "Top-k ties").
    std::stable_sort(eligible.begin(), eligible.end(),
                     [&](int64_t p, int64_t q) { return ix.scores[t * n_t + p] > ix.scores[t * n_t + q]; });
    eligible.resize(std::min<size_t>(eligible.size(), static_cast<size_t>(c.index_topk)));
    ix.topk.push_back(eligible);
  }
  return ix;
}

// c_q = RMSNorm_{w_qa}(X @ W_qa^T): the query's low-rank latent, [S, r_q].
Mat query_latent(const Config& c, const LayerWeights& w, const float* x, int64_t s_len) {
  Mat c_q = linear(x, s_len, w.q_a_proj);
  for (int64_t t = 0; t < s_len; ++t)
    rms_norm(&c_q[t * c.q_lora_rank], c.q_lora_rank, w.q_a_norm.ptr(), c.rms_norm_eps);
  return c_q;
}

Mat forward_one(const Config& c, LayerType type, const LayerWeights& w, const float* x, int64_t s_len,
                Intermediates* dbg, Rounder* round) {
  const int64_t h_n = c.num_attention_heads, hd = c.head_dim, win = c.sliding_window;
  const std::vector<float> freq = rope_inv_freq(c, type);

  // 1. query: low-rank, weighted norm, up-projection, per-head norm, RoPE
  const Mat c_q = query_latent(c, w, x, s_len);
  Mat q = linear(c_q.data(), s_len, w.q_b_proj);
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t h = 0; h < h_n; ++h) {
      rms_norm(&q[(t * h_n + h) * hd], hd, c.rms_norm_eps);
      rope(&q[(t * h_n + h) * hd], hd, freq, t, +1);
    }
  // 2. key = value
  Mat kv = linear(x, s_len, w.kv_proj);
  for (int64_t t = 0; t < s_len; ++t) {
    rms_norm(&kv[t * hd], hd, w.kv_norm.ptr(), c.rms_norm_eps);
    rope(&kv[t * hd], hd, freq, t, +1);
    if (round) round->kv_row(&kv[t * hd], hd, c.qk_rope_head_dim, w.kv_norm.ptr());
  }
  // 4. compressed entries (+ indexer for CSA)
  const int64_t rate = c.compress_rate(type);
  Mat comp;
  Indexed ix;
  if (type != LayerType::sliding)
    comp = compress(x, s_len, *w.compressor, rate, hd, type == LayerType::csa, c.rms_norm_eps, freq, round,
                    c.qk_rope_head_dim);
  if (type == LayerType::csa) ix = run_indexer(c, w, x, c_q, s_len, freq, round);

  // 5-6. attention with sink, then de-rotation
  Mat o(static_cast<size_t>(s_len * h_n * hd));
  for (int64_t t = 0; t < s_len; ++t) {
    std::vector<const float*> keys;
    for (int64_t p = std::max<int64_t>(0, t - win + 1); p <= t; ++p) keys.push_back(&kv[p * hd]);
    if (type == LayerType::hca)
      for (int64_t e = 0; e < (t + 1) / rate; ++e) keys.push_back(&comp[e * hd]);
    if (type == LayerType::csa)
      for (int64_t e : ix.topk[t]) keys.push_back(&comp[e * hd]);
    for (int64_t h = 0; h < h_n; ++h) {
      const float* qh = &q[(t * h_n + h) * hd];
      std::vector<double> logit(keys.size());
      double mx = w.sinks.data[h];
      for (size_t j = 0; j < keys.size(); ++j) {
        double dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += static_cast<double>(qh[i]) * keys[j][i];
        logit[j] = dot / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, logit[j]);
      }
      double den = std::exp(w.sinks.data[h] - mx);  // the sink takes mass, adds no value
      for (double& l : logit) den += (l = std::exp(l - mx));
      float* oh = &o[(t * h_n + h) * hd];
      for (int64_t i = 0; i < hd; ++i) {
        double acc = 0;
        for (size_t j = 0; j < keys.size(); ++j) acc += logit[j] * keys[j][i];
        oh[i] = static_cast<float>(acc / den);
      }
      rope(oh, hd, freq, t, -1);
    }
  }
  // 7. grouped output projection: group i of H·D/g channels through block i of W_oa
  const int64_t g = c.o_groups, dg = c.o_lora_rank, gw = h_n * hd / g;
  Mat grouped(static_cast<size_t>(s_len * g * dg));
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t gi = 0; gi < g; ++gi)
      for (int64_t r = 0; r < dg; ++r) {
        double acc = 0;
        for (int64_t i = 0; i < gw; ++i)
          acc += static_cast<double>(o[t * h_n * hd + gi * gw + i]) * w.o_a_proj.data[(gi * dg + r) * gw + i];
        grouped[(t * g + gi) * dg + r] = static_cast<float>(acc);
      }
  Mat out = linear(grouped.data(), s_len, w.o_b_proj);

  if (dbg) {
    const int64_t n_t = rate ? s_len / rate : 0;
    dbg->q = Tensor({h_n, s_len, hd});
    for (int64_t h = 0; h < h_n; ++h)
      for (int64_t t = 0; t < s_len; ++t) std::copy_n(&q[(t * h_n + h) * hd], hd, &dbg->q.data[(h * s_len + t) * hd]);
    dbg->kv = Tensor({s_len, hd}, kv);
    if (rate) dbg->compressed_kv = Tensor({n_t, hd}, comp);
    if (type == LayerType::csa) {
      const int64_t width = std::min(c.index_topk, n_t);
      dbg->indexer_q = Tensor({s_len, c.index_n_heads, c.index_head_dim}, ix.q);
      dbg->indexer_kv = Tensor({n_t, c.index_head_dim}, ix.keys);
      dbg->index_scores = Tensor({s_len, n_t}, ix.scores);
      dbg->topk.shape = {s_len, width};
      dbg->topk.data.assign(static_cast<size_t>(s_len * width), -1);
      for (int64_t t = 0; t < s_len; ++t)
        std::copy(ix.topk[t].begin(), ix.topk[t].end(), dbg->topk.data.begin() + t * width);
    }
  }
  return out;
}

}  // namespace

Tensor forward(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x, std::vector<Intermediates>* debug,
               Numerics numerics, double* closest_tie) {
  const int64_t b = x.dim(0), s_len = x.dim(1), d = x.dim(2);
  Tensor out({b, s_len, d});
  if (debug) debug->assign(static_cast<size_t>(b), {});
  Rounder rounder;
  Rounder* round = numerics == Numerics::deployment ? &rounder : nullptr;
  for (int64_t i = 0; i < b; ++i) {
    Mat y = forward_one(c, t, w, x.ptr() + i * s_len * d, s_len, debug ? &(*debug)[i] : nullptr, round);
    std::copy(y.begin(), y.end(), out.ptr() + i * s_len * d);
  }
  if (closest_tie) *closest_tie = rounder.closest;
  return out;
}

Selection select_topk(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x) {
  const int64_t b = x.dim(0), s_len = x.dim(1), d = x.dim(2);
  Selection sel(static_cast<size_t>(b));
  if (t != LayerType::csa) return sel;
  const std::vector<float> freq = rope_inv_freq(c, t);
  for (int64_t i = 0; i < b; ++i) {
    const float* xi = x.ptr() + i * s_len * d;
    sel[i] = run_indexer(c, w, xi, query_latent(c, w, xi, s_len), s_len, freq, nullptr).topk;
  }
  return sel;
}

}  // namespace dsv4::reference
