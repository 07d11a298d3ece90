// The naive backward: gradients of L = Σ y · dy for one layer, in straight
// loops. A forward entirely in double keeps every intermediate of a sequence
// (Fwd); the backward then walks the stages of attention.md in reverse, each
// one the transpose of its forward step. The CSA selection comes from the
// reference indexer (select_topk) and is held fixed, so the indexer's weights
// get no gradient.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "dsv4/error.h"
#include "reference.h"

namespace dsv4::reference {
namespace {

using Vec = std::vector<double>;
using detail::linear;
using detail::rms_inv;
using detail::rope;

// The layer's dimensions, named as in the spec.
struct Dims {
  int64_t d, h, hd, rq, g, dg, gw, win, rate, in_w;  // in_w: compressor C/Z width (2D for CSA)
  bool overlap;
  double eps;
  std::vector<float> freq;
  Dims(const Config& c, LayerType t)
      : d(c.hidden_size), h(c.num_attention_heads), hd(c.head_dim), rq(c.q_lora_rank), g(c.o_groups), dg(c.o_lora_rank),
        gw(h * hd / g), win(c.sliding_window), rate(c.compress_rate(t)), in_w(t == LayerType::csa ? 2 * hd : hd),
        overlap(t == LayerType::csa), eps(c.rms_norm_eps), freq(rope_inv_freq(c, t)) {}
};

// The tensors the backward reads (or writes, P = double*) by role; null where
// the layer type has none. The indexer's are not here: nothing uses them.
template <class P>
struct Params {
  P q_a, q_a_norm, q_b, kv, kv_norm, o_a, o_b, sinks, c_kv, c_gate, c_bias, c_norm;
};

template <class Map>
auto params(Map& m) {
  using P = decltype(m.begin()->second.data());
  const auto at = [&](WeightId id) -> P {
    const auto it = m.find(std::string(weight_entry(id).name));
    return it == m.end() ? nullptr : it->second.data();
  };
  using W = WeightId;
  return Params<P>{at(W::q_a_proj),
                   at(W::q_a_norm),
                   at(W::q_b_proj),
                   at(W::kv_proj),
                   at(W::kv_norm),
                   at(W::o_a_proj),
                   at(W::o_b_proj),
                   at(W::sinks),
                   at(W::compressor_kv_proj),
                   at(W::compressor_gate_proj),
                   at(W::compressor_position_bias),
                   at(W::compressor_kv_norm)};
}

// A key (= value) a query sees: window row `idx` of kv, or compressed entry `idx`.
struct Key {
  bool entry;
  int64_t idx;
};

// One sequence's forward, every intermediate in double.
struct Fwd {
  int64_t s = 0, n_t = 0;
  const double* x = nullptr;           // [S, d]
  Vec cq_raw, cq;                      // [S, r_q]     X W_qa^T, then RMSNorm_{w_qa}
  Vec q_raw, q;                        // [S, H, D]    c_q W_qb^T, then per-head RMSNorm + RoPE
  Vec kv_raw, kv;                      // [S, D]       X W_kv^T, then RMSNorm_{w_kv} + RoPE
  Vec cc, cz;                          // [S, in_w]    compressor C and Z
  Vec pooled, entry;                   // [T, D]       softmax-pooled, then RMSNorm + RoPE at w·r
  std::vector<std::vector<Key>> keys;  // per query: window, then compressed
  std::vector<Vec> prob;               // [S·H][keys]  attention probabilities
  Vec p_sink;                          // [S, H]       the sink's probability
  Vec o;                               // [S, H·D]     attention output after de-rotation
  Vec grouped;                         // [S, g·d_g]   o_a's output
  Vec y;                               // [S, d]
};

const double* key_row(const Fwd& f, const Key& k, int64_t hd) {
  return k.entry ? &f.entry[k.idx * hd] : &f.kv[k.idx * hd];
}

// Softmax over the pooling slots of entry w, channel ch: (slot, probability).
std::vector<std::pair<detail::Slot, double>> pool_probs(const Dims& dm, const Fwd& f, const double* bias, int64_t w,
                                                        int64_t ch) {
  std::vector<std::pair<detail::Slot, double>> sp;
  double mx = -INFINITY, den = 0;
  for (const detail::Slot& sl : detail::pool_slots(w, ch, dm.rate, dm.hd, dm.overlap)) {
    sp.push_back({sl, f.cz[sl.tok * dm.in_w + sl.col] + bias[sl.row * dm.in_w + sl.col]});
    mx = std::max(mx, sp.back().second);
  }
  for (auto& [sl, l] : sp) den += (l = std::exp(l - mx));
  for (auto& [sl, p] : sp) p /= den;
  return sp;
}

void compress_forward(const Dims& dm, const Params<const double*>& w, Fwd& f) {
  f.cc = linear(f.x, f.s, w.c_kv, dm.in_w, dm.d);
  f.cz = linear(f.x, f.s, w.c_gate, dm.in_w, dm.d);
  f.pooled.assign(static_cast<size_t>(f.n_t * dm.hd), 0.0);
  for (int64_t e = 0; e < f.n_t; ++e)
    for (int64_t ch = 0; ch < dm.hd; ++ch)
      for (const auto& [sl, p] : pool_probs(dm, f, w.c_bias, e, ch))
        f.pooled[e * dm.hd + ch] += p * f.cc[sl.tok * dm.in_w + sl.col];
  f.entry = f.pooled;
  for (int64_t e = 0; e < f.n_t; ++e) {
    detail::rms_norm(&f.entry[e * dm.hd], dm.hd, w.c_norm, dm.eps);
    rope(&f.entry[e * dm.hd], dm.hd, dm.freq, e * dm.rate, +1);
  }
}

// Attention with sink for query t, head h: fills prob, p_sink and o (before de-rotation).
void attend(const Dims& dm, const Params<const double*>& w, Fwd& f, int64_t t, int64_t h) {
  const std::vector<Key>& keys = f.keys[t];
  const double* qh = &f.q[(t * dm.h + h) * dm.hd];
  Vec& p = f.prob[t * dm.h + h];
  p.resize(keys.size());
  double mx = w.sinks[h];
  for (size_t j = 0; j < keys.size(); ++j) {
    const double* k = key_row(f, keys[j], dm.hd);
    double dot = 0;
    for (int64_t i = 0; i < dm.hd; ++i) dot += qh[i] * k[i];
    p[j] = dot / std::sqrt(static_cast<double>(dm.hd));
    mx = std::max(mx, p[j]);
  }
  double den = std::exp(w.sinks[h] - mx);
  for (double& v : p) den += (v = std::exp(v - mx));
  for (double& v : p) v /= den;
  f.p_sink[t * dm.h + h] = std::exp(w.sinks[h] - mx) / den;
  double* oh = &f.o[(t * dm.h + h) * dm.hd];
  for (size_t j = 0; j < keys.size(); ++j) {
    const double* k = key_row(f, keys[j], dm.hd);
    for (int64_t i = 0; i < dm.hd; ++i) oh[i] += p[j] * k[i];
  }
}

Fwd forward_seq(LayerType type, const Dims& dm, const Params<const double*>& w, const double* x, int64_t s_len,
                const std::vector<std::vector<int64_t>>* topk) {
  Fwd f;
  f.s = s_len;
  f.x = x;
  f.n_t = dm.rate ? s_len / dm.rate : 0;
  // 1. query
  f.cq_raw = linear(x, s_len, w.q_a, dm.rq, dm.d);
  f.cq = f.cq_raw;
  for (int64_t t = 0; t < s_len; ++t) detail::rms_norm(&f.cq[t * dm.rq], dm.rq, w.q_a_norm, dm.eps);
  f.q_raw = linear(f.cq.data(), s_len, w.q_b, dm.h * dm.hd, dm.rq);
  f.q = f.q_raw;
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t h = 0; h < dm.h; ++h) {
      detail::rms_norm(&f.q[(t * dm.h + h) * dm.hd], dm.hd, dm.eps);
      rope(&f.q[(t * dm.h + h) * dm.hd], dm.hd, dm.freq, t, +1);
    }
  // 2. key = value
  f.kv_raw = linear(x, s_len, w.kv, dm.hd, dm.d);
  f.kv = f.kv_raw;
  for (int64_t t = 0; t < s_len; ++t) {
    detail::rms_norm(&f.kv[t * dm.hd], dm.hd, w.kv_norm, dm.eps);
    rope(&f.kv[t * dm.hd], dm.hd, dm.freq, t, +1);
  }
  // 3-4. the keys of each query; compressed entries
  if (type != LayerType::sliding) compress_forward(dm, w, f);
  f.keys.resize(static_cast<size_t>(s_len));
  for (int64_t t = 0; t < s_len; ++t) {
    for (int64_t p = std::max<int64_t>(0, t - dm.win + 1); p <= t; ++p) f.keys[t].push_back({false, p});
    if (type == LayerType::hca)
      for (int64_t e = 0; e < (t + 1) / dm.rate; ++e) f.keys[t].push_back({true, e});
    if (type == LayerType::csa)
      for (int64_t e : (*topk)[t]) f.keys[t].push_back({true, e});
  }
  // 5-6. attention with sink, de-rotation
  f.prob.resize(static_cast<size_t>(s_len * dm.h));
  f.p_sink.assign(static_cast<size_t>(s_len * dm.h), 0.0);
  f.o.assign(static_cast<size_t>(s_len * dm.h * dm.hd), 0.0);
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t h = 0; h < dm.h; ++h) {
      attend(dm, w, f, t, h);
      rope(&f.o[(t * dm.h + h) * dm.hd], dm.hd, dm.freq, t, -1);
    }
  // 7. grouped output projection
  f.grouped.assign(static_cast<size_t>(s_len * dm.g * dm.dg), 0.0);
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t gi = 0; gi < dm.g; ++gi)
      for (int64_t r = 0; r < dm.dg; ++r) {
        double acc = 0;
        for (int64_t i = 0; i < dm.gw; ++i)
          acc += f.o[t * dm.h * dm.hd + gi * dm.gw + i] * w.o_a[(gi * dm.dg + r) * dm.gw + i];
        f.grouped[(t * dm.g + gi) * dm.dg + r] = acc;
      }
  f.y = linear(f.grouped.data(), s_len, w.o_b, dm.d, dm.g * dm.dg);
  return f;
}

// ---- backward helpers: each the transpose of one forward step ----

// y = x W^T (x [rows, in], W [out, in]): dW += dy^T x; returns dx = dy W.
Vec linear_back(const double* x, const Vec& dy, int64_t rows, const double* w, int64_t out, int64_t in, double* dw) {
  Vec dx(static_cast<size_t>(rows * in), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      const double g = dy[r * out + o];
      for (int64_t i = 0; i < in; ++i) {
        dw[o * in + i] += g * x[r * in + i];
        dx[r * in + i] += g * w[o * in + i];
      }
    }
  return dx;
}

// y = w ⊙ x · inv, inv = (mean(x²) + eps)^(-1/2), over rows of n (w may be null).
// With g = dy ⊙ w: dx = inv·g − x·inv³·(g·x)/n; dw += dy ⊙ x · inv.
Vec rms_back(const Vec& x, const Vec& dy, int64_t n, const double* w, double eps, double* dw) {
  Vec dx(x.size());
  for (size_t r = 0; r < x.size() / n; ++r) {
    const double* xr = &x[r * n];
    const double* dyr = &dy[r * n];
    const double inv = rms_inv(xr, n, eps);
    double gx = 0;
    for (int64_t i = 0; i < n; ++i) gx += dyr[i] * (w ? w[i] : 1.0) * xr[i];
    for (int64_t i = 0; i < n; ++i) {
      dx[r * n + i] = inv * dyr[i] * (w ? w[i] : 1.0) - xr[i] * inv * inv * inv * gx / n;
      if (dw) dw[i] += dyr[i] * xr[i] * inv;
    }
  }
  return dx;
}

// The transpose of RoPE by +angle at `pos` is RoPE by -angle, and vice versa.
void rope_back(double* dv, int64_t width, const std::vector<float>& freq, int64_t pos, int forward_sign) {
  rope(dv, width, freq, pos, -forward_sign);
}

void add(Vec& a, const Vec& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
}

// Attention of query t, head h, given d o (before de-rotation): adds to dq,
// the key/value rows' gradients (dkv, dentry) and the sink's.
void attend_back(const Dims& dm, const Fwd& f, int64_t t, int64_t h, const double* d_o, double* dq, Vec& dkv,
                 Vec& dentry, double* dsinks, double* sink_terms) {
  const std::vector<Key>& keys = f.keys[t];
  const Vec& p = f.prob[t * dm.h + h];
  const double* qh = &f.q[(t * dm.h + h) * dm.hd];
  const double scale = 1.0 / std::sqrt(static_cast<double>(dm.hd));
  Vec dp(keys.size(), 0.0);
  double s = 0;  // Σ_j p_j dp_j
  for (size_t j = 0; j < keys.size(); ++j) {
    const double* v = key_row(f, keys[j], dm.hd);
    for (int64_t i = 0; i < dm.hd; ++i) dp[j] += d_o[i] * v[i];
    s += p[j] * dp[j];
  }
  dsinks[h] -= f.p_sink[t * dm.h + h] * s;  // the sink's dp is 0: it has no value
  if (sink_terms) {                         // p_sink · |dO| |o| bounds this query's term and its rounding's reach
    double n_do = 0, n_o = 0;
    for (int64_t i = 0; i < dm.hd; ++i) {
      n_do += d_o[i] * d_o[i];
      n_o += f.o[(t * dm.h + h) * dm.hd + i] * f.o[(t * dm.h + h) * dm.hd + i];
    }
    sink_terms[h] += f.p_sink[t * dm.h + h] * std::sqrt(n_do * n_o);
  }
  for (size_t j = 0; j < keys.size(); ++j) {
    const double* v = key_row(f, keys[j], dm.hd);
    double* dv = keys[j].entry ? &dentry[keys[j].idx * dm.hd] : &dkv[keys[j].idx * dm.hd];
    const double dl = p[j] * (dp[j] - s) * scale;  // d logit, through the 1/sqrt(D)
    for (int64_t i = 0; i < dm.hd; ++i) {
      dv[i] += p[j] * d_o[i] + dl * qh[i];  // as value, then as key
      dq[i] += dl * v[i];
    }
  }
}

// Compressed entries -> dC, dZ, d position_bias, d kv_norm; returns dx.
Vec compress_back(const Dims& dm, const Params<const double*>& w, const Params<double*>& gw, const Fwd& f, Vec dentry) {
  for (int64_t e = 0; e < f.n_t; ++e) rope_back(&dentry[e * dm.hd], dm.hd, dm.freq, e * dm.rate, +1);
  const Vec dpooled = rms_back(f.pooled, dentry, dm.hd, w.c_norm, dm.eps, gw.c_norm);
  Vec dc(f.cc.size(), 0.0), dz(f.cz.size(), 0.0);
  for (int64_t e = 0; e < f.n_t; ++e)
    for (int64_t ch = 0; ch < dm.hd; ++ch) {
      const double de = dpooled[e * dm.hd + ch], pooled = f.pooled[e * dm.hd + ch];
      for (const auto& [sl, p] : pool_probs(dm, f, w.c_bias, e, ch)) {
        const int64_t at = sl.tok * dm.in_w + sl.col;
        const double dlogit = p * (f.cc[at] - pooled) * de;
        dc[at] += p * de;
        dz[at] += dlogit;
        gw.c_bias[sl.row * dm.in_w + sl.col] += dlogit;
      }
    }
  Vec dx = linear_back(f.x, dc, f.s, w.c_kv, dm.in_w, dm.d, gw.c_kv);
  add(dx, linear_back(f.x, dz, f.s, w.c_gate, dm.in_w, dm.d, gw.c_gate));
  return dx;
}

// One sequence: adds the weight gradients into gw, returns dx [S, d].
Vec backward_seq(const Dims& dm, const Params<const double*>& w, const Params<double*>& gw, const Fwd& f, const Vec& dy,
                 double* sink_terms) {
  const int64_t s_len = f.s, hd_all = dm.h * dm.hd;
  // 7. o_b, then the g blocks of o_a
  const Vec dgrouped = linear_back(f.grouped.data(), dy, s_len, w.o_b, dm.d, dm.g * dm.dg, gw.o_b);
  Vec d_o(f.o.size(), 0.0);
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t gi = 0; gi < dm.g; ++gi)
      for (int64_t r = 0; r < dm.dg; ++r) {
        const double g = dgrouped[(t * dm.g + gi) * dm.dg + r];
        for (int64_t i = 0; i < dm.gw; ++i) {
          const int64_t oi = t * hd_all + gi * dm.gw + i, wi = (gi * dm.dg + r) * dm.gw + i;
          gw.o_a[wi] += g * f.o[oi];
          d_o[oi] += g * w.o_a[wi];
        }
      }
  // 6-5. de-rotation, attention with sink
  Vec dq(f.q.size(), 0.0), dkv(f.kv.size(), 0.0), dentry(f.entry.size(), 0.0);
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t h = 0; h < dm.h; ++h) {
      double* doh = &d_o[(t * dm.h + h) * dm.hd];
      rope_back(doh, dm.hd, dm.freq, t, -1);
      attend_back(dm, f, t, h, doh, &dq[(t * dm.h + h) * dm.hd], dkv, dentry, gw.sinks, sink_terms);
    }
  // 1. query: RoPE, per-head norm, q_b, weighted norm, q_a
  for (int64_t t = 0; t < s_len; ++t)
    for (int64_t h = 0; h < dm.h; ++h) rope_back(&dq[(t * dm.h + h) * dm.hd], dm.hd, dm.freq, t, +1);
  const Vec dq_raw = rms_back(f.q_raw, dq, dm.hd, nullptr, dm.eps, nullptr);
  const Vec dcq = linear_back(f.cq.data(), dq_raw, s_len, w.q_b, hd_all, dm.rq, gw.q_b);
  const Vec dcq_raw = rms_back(f.cq_raw, dcq, dm.rq, w.q_a_norm, dm.eps, gw.q_a_norm);
  Vec dx = linear_back(f.x, dcq_raw, s_len, w.q_a, dm.rq, dm.d, gw.q_a);
  // 2. key = value: RoPE, weighted norm, kv_proj
  for (int64_t t = 0; t < s_len; ++t) rope_back(&dkv[t * dm.hd], dm.hd, dm.freq, t, +1);
  const Vec dkv_raw = rms_back(f.kv_raw, dkv, dm.hd, w.kv_norm, dm.eps, gw.kv_norm);
  add(dx, linear_back(f.x, dkv_raw, s_len, w.kv, dm.hd, dm.d, gw.kv));
  // 4. compressor (its entries' gradients; a token of an incomplete window gets none)
  if (f.n_t > 0) add(dx, compress_back(dm, w, gw, f, std::move(dentry)));
  return dx;
}

void check_selection(LayerType t, const Selection& sel, int64_t b) {
  if (t == LayerType::csa && static_cast<int64_t>(sel.size()) != b)
    fail("reference: a CSA forward needs the selection of each of the " + std::to_string(b) + " sequences");
}

}  // namespace

Point64 widen(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x) {
  Point64 p{x.shape, std::vector<double>(x.data.begin(), x.data.end()), {}};
  for_each_weight(w, c, t, [&](const WeightSpec& s, const Tensor& src) {
    if (src.shape != s.shape) fail("reference: weight " + s.name + " missing or of the wrong shape");
    p.w[s.name].assign(src.data.begin(), src.data.end());
  });
  return p;
}

std::vector<double> forward_f64(const Config& c, LayerType t, const Point64& p, const Selection& sel) {
  const int64_t b = p.x_shape[0], s_len = p.x_shape[1], d = p.x_shape[2];
  check_selection(t, sel, b);
  const Dims dm(c, t);
  const Params<const double*> w = params(p.w);
  std::vector<double> y;
  for (int64_t i = 0; i < b; ++i) {
    const Fwd f = forward_seq(t, dm, w, &p.x[i * s_len * d], s_len, t == LayerType::csa ? &sel[i] : nullptr);
    y.insert(y.end(), f.y.begin(), f.y.end());
  }
  return y;
}

double loss_f64(const Config& c, LayerType t, const Point64& p, const Tensor& dy, const Selection& sel) {
  const std::vector<double> y = forward_f64(c, t, p, sel);
  if (dy.numel() != static_cast<int64_t>(y.size())) fail("reference: dy has the wrong size");
  double l = 0;
  for (size_t i = 0; i < y.size(); ++i) l += y[i] * dy.data[i];
  return l;
}

LayerGradients backward(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x, const Tensor& dy) {
  return backward(c, t, w, x, dy, select_topk(c, t, w, x));
}

LayerGradients backward(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x, const Tensor& dy,
                        const Selection& sel, std::vector<double>* sink_terms) {
  if (x.shape.size() != 3 || dy.shape != x.shape) fail("reference::backward: x and dy must both be [B, S, d]");
  if (sink_terms) sink_terms->assign(static_cast<size_t>(c.num_attention_heads), 0.0);
  const int64_t b = x.dim(0), s_len = x.dim(1), d = x.dim(2);
  const Point64 p = widen(c, t, w, x);
  const Dims dm(c, t);
  const Params<const double*> pw = params(p.w);
  std::map<std::string, std::vector<double>> grads;
  for (const auto& [name, v] : p.w) grads[name].assign(v.size(), 0.0);
  const Params<double*> gw = params(grads);

  LayerGradients g;
  g.dx = Tensor(x.shape);
  for (int64_t i = 0; i < b; ++i) {
    const Fwd f = forward_seq(t, dm, pw, &p.x[i * s_len * d], s_len, t == LayerType::csa ? &sel[i] : nullptr);
    const Vec dyi(dy.data.begin() + i * s_len * d, dy.data.begin() + (i + 1) * s_len * d);
    const Vec dx = backward_seq(dm, pw, gw, f, dyi, sink_terms ? sink_terms->data() : nullptr);
    std::copy(dx.begin(), dx.end(), g.dx.data.begin() + i * s_len * d);  // narrows to fp32
  }
  g.weights = zero_weights(c, t);
  for_each_weight(g.weights, c, t, [&](const WeightSpec& s, Tensor& gt) {  // the indexer's stay zero
    std::copy(grads[s.name].begin(), grads[s.name].end(), gt.data.begin());
  });
  return g;
}

}  // namespace dsv4::reference
