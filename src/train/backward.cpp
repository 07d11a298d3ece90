// Layer::backward: the chain rule through one layer, stage by stage in
// reverse pipeline order, one sequence at a time and queries in chunks.
//
// Saved by forward_train (pipeline/tape.h): x, the window rows, the entries, the
// CSA selection, o and the grouped projection. Recomputed here from x: the raw
// projections (c_q, kv, the compressors' C and Z: one GEMM), q per chunk, the
// attention probabilities per query and the pooled entries. Memory is the tape
// plus O(S·(r_q + D + compressor width)) and O(chunk·(H·D + (W + k)·D)) scratch.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "dsv4/error.h"
#include "train/backward.h"
#include "ops/blas.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "train/grad.h"

namespace dsv4 {

namespace {

constexpr int64_t kQueryChunk = 512;  // queries per step of the output/attention/q backward

// The projection matrices as fp32 (views of f32 layers, dequantised copies otherwise).
struct DenseWeights {
  std::vector<float> buf[4];
  const float *raw = nullptr, *qb = nullptr, *oa = nullptr, *ob = nullptr;
  int64_t n_raw = 0;  // rows of [W_qa; W_kv; W_ckv; W_cg] (w_in without the indexer)
};

DenseWeights dense_weights(const PackedLayer& p) {
  DenseWeights d;
  d.n_raw = p.w->indexer ? p.off_ic : p.n_in;
  d.raw = p.w_in.dense(0, d.n_raw, d.buf[0]);
  d.qb = p.w_up.dense(0, p.off_iq, d.buf[1]);
  d.oa = p.w_oa.dense(0, p.w_oa.rows, d.buf[2]);
  d.ob = p.w_ob.dense(0, p.w_ob.rows, d.buf[3]);
  return d;
}

// Rotate the trailing R channels of each of `heads` D-vectors of row `pos`.
void rotate_heads(const PackedLayer& p, float* row, int64_t heads, int64_t pos, bool inverse) {
  const int64_t hd = p.c.head_dim, rd = p.c.qk_rope_head_dim, half = rd / 2;
  float cs[512], sn[512];
  if (half > 512) fail("qk_rope_head_dim above 1024 is not supported");
  rope_cos_sin(p.inv_freq, pos, cs, sn);
  for (int64_t h = 0; h < heads; ++h) rope_rotate(row + h * hd + hd - rd, rd, cs, sn, inverse);
}

// The backward's scratch, kept per calling thread between calls (as the
// forward's workspace is): a warm call touches no new pages.
struct Buffers {
  std::vector<float> raw, draw, cq, dcq, inv_cq, inv_kv, dkv, dent, dsink;  // per sequence
  std::vector<float> dgrouped, d_o, delta, qraw, q, inv_q, dq;              // per query chunk
};

class SeqBackward {
 public:
  SeqBackward(const PackedLayer& p, const DenseWeights& w, const SeqTape& tape, const float* x, const float* dy,
              LayerGradients& g, Buffers& b)
      : p_(p), c_(p.c), w_(w), t_(tape), x_(x), dy_(dy), g_(g), s_(tape.len), raw_(b.raw), draw_(b.draw), cq_(b.cq),
        dcq_(b.dcq), inv_cq_(b.inv_cq), inv_kv_(b.inv_kv), dkv_(b.dkv), dent_(b.dent), dsink_(b.dsink),
        dgrouped_(b.dgrouped), d_o_(b.d_o), delta_(b.delta), qraw_(b.qraw), q_(b.q), inv_q_(b.inv_q), dq_(b.dq) {}

  void run(float* dx) {
    recompute();
    for (int64_t t0 = 0; t0 < s_; t0 += kQueryChunk) query_chunk(t0, std::min(s_, t0 + kQueryChunk));
    kv_side();
    q_a_side();
    if (p_.rate) compressor_side();
    input_side(dx);
    for (int64_t t = 0; t < s_; ++t)  // the sinks' gradient, query after query
      for (int64_t h = 0; h < c_.num_attention_heads; ++h) g_.weights.sinks.data[h] += dsink_[t * c_.num_attention_heads + h];
  }

 private:
  // Raw projections of every token, c_q normed, and the gradients' buffers.
  void recompute() {
    const int64_t n = w_.n_raw, rq = c_.q_lora_rank;
    raw_.resize(static_cast<size_t>(s_ * n));
    linear(RowGroup{0, s_, false}, n, x_, c_.hidden_size, p_.w_in, 0, raw_.data(), n);
    cq_.resize(static_cast<size_t>(s_ * rq));
    inv_cq_.resize(s_), inv_kv_.resize(s_);
    const float* qa_norm = p_.w->q_a_norm.ptr();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < s_; ++t) {
      const float* r = &raw_[t * n];
      inv_cq_[t] = rms_inv(r, rq, c_.rms_norm_eps);
      inv_kv_[t] = rms_inv(r + p_.off_kv, c_.head_dim, c_.rms_norm_eps);
      for (int64_t i = 0; i < rq; ++i) cq_[t * rq + i] = qa_norm[i] * (r[i] * inv_cq_[t]);
    }
    draw_.assign(static_cast<size_t>(s_ * n), 0.0f);
    dcq_.assign(static_cast<size_t>(s_ * rq), 0.0f);
    dkv_.assign(t_.kv.size(), 0.0f);
    dent_.assign(static_cast<size_t>(t_.entries.rows() * c_.head_dim), 0.0f);
    dsink_.assign(static_cast<size_t>(s_ * c_.num_attention_heads), 0.0f);
  }

  // Output projections, de-rotation, attention and the q path for queries [t0, t1).
  void query_chunk(int64_t t0, int64_t t1) {
    const int64_t n = t1 - t0, d = c_.hidden_size, hd = c_.head_dim, h_n = c_.num_attention_heads;
    const int64_t ho = h_n * hd, g = c_.o_groups, dg = c_.o_lora_rank, gd = g * dg, gw = ho / g, rq = c_.q_lora_rank;
    const float* dy = dy_ + t0 * d;
    // o_b and the grouped o_a
    dgrouped_.resize(static_cast<size_t>(n * gd));
    gemm_nn(n, gd, d, dy, d, w_.ob, gd, dgrouped_.data(), gd);
    d_o_.resize(static_cast<size_t>(n * ho));
    for (int64_t i = 0; i < g; ++i) {
      gemm_nn(n, gw, dg, &dgrouped_[i * dg], gd, w_.oa + i * dg * gw, gw, &d_o_[i * gw], ho);
      gemm_tn(dg, gw, n, &dgrouped_[i * dg], gd, &t_.o[t0 * ho + i * gw], ho, g_.weights.o_a_proj.ptr() + i * dg * gw,
              gw, 1.0f);
    }
    // Δ = dO · o per head, in double (o as saved, after de-rotation: the rotation is orthogonal)
    delta_.resize(static_cast<size_t>(n * h_n));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n * h_n; ++r) {
      double acc = 0;
      const float *a = &d_o_[r * hd], *b = &t_.o[t0 * ho + r * hd];
      for (int64_t i = 0; i < hd; ++i) acc += static_cast<double>(a[i]) * b[i];
      delta_[r] = static_cast<float>(acc);
    }
    // q recomputed: up-projection, per-head norm, RoPE
    qraw_.resize(static_cast<size_t>(n * ho));
    q_.resize(static_cast<size_t>(n * ho));
    inv_q_.resize(static_cast<size_t>(n * h_n));
    linear(RowGroup{0, n, false}, ho, &cq_[t0 * rq], rq, p_.w_up, 0, qraw_.data(), ho);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      rotate_heads(p_, &d_o_[r * ho], h_n, t0 + r, false);  // de-rotation's transpose
      for (int64_t h = 0; h < h_n; ++h) {
        const float* x = &qraw_[r * ho + h * hd];
        float* y = &q_[r * ho + h * hd];
        const float inv = inv_q_[r * h_n + h] = rms_inv(x, hd, c_.rms_norm_eps);
        for (int64_t i = 0; i < hd; ++i) y[i] = x[i] * inv;
      }
      rotate_heads(p_, &q_[r * ho], h_n, t0 + r, false);
    }
    dq_.resize(static_cast<size_t>(n * ho));
    attend_backward(p_, t_, t0, t1, q_.data(), d_o_.data(), delta_.data(), dq_.data(), &dsink_[t0 * h_n], dkv_.data(),
                    dent_.data());
    // back through RoPE and the per-head norm (into q_, free now), then q_b
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      rotate_heads(p_, &dq_[r * ho], h_n, t0 + r, true);
      for (int64_t h = 0; h < h_n; ++h)
        rms_norm_backward(&qraw_[r * ho + h * hd], hd, inv_q_[r * h_n + h], nullptr, &dq_[r * ho + h * hd],
                          &q_[r * ho + h * hd]);
    }
    gemm_nn(n, rq, ho, q_.data(), ho, w_.qb, rq, &dcq_[t0 * rq], rq);
    gemm_tn(ho, rq, n, q_.data(), ho, &cq_[t0 * rq], rq, g_.weights.q_b_proj.ptr(), rq, 1.0f);
  }

  // kv = RoPE(RMSNorm_w(x W_kv^T)): its gradient from every query that read it.
  void kv_side() {
    const int64_t hd = c_.head_dim, n = w_.n_raw;
    const float* norm = p_.w->kv_norm.ptr();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < s_; ++t) {
      rotate_heads(p_, &dkv_[t * hd], 1, t, true);
      rms_norm_backward(&raw_[t * n + p_.off_kv], hd, inv_kv_[t], norm, &dkv_[t * hd], &draw_[t * n + p_.off_kv]);
    }
    norm_weight_grad(s_, hd, dkv_.data(), hd, &raw_[p_.off_kv], n, inv_kv_.data(), g_.weights.kv_norm.ptr());
  }

  void q_a_side() {
    const int64_t rq = c_.q_lora_rank, n = w_.n_raw;
    const float* norm = p_.w->q_a_norm.ptr();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < s_; ++t)
      rms_norm_backward(&raw_[t * n], rq, inv_cq_[t], norm, &dcq_[t * rq], &draw_[t * n]);
    norm_weight_grad(s_, rq, dcq_.data(), rq, raw_.data(), n, inv_cq_.data(), g_.weights.q_a_norm.ptr());
  }

  void compressor_side() {
    CompressorGrad cg;
    cg.w = &*p_.w->compressor;
    cg.rate = p_.rate, cg.width = c_.head_dim, cg.overlap = p_.type == LayerType::csa;
    cg.ld = w_.n_raw, cg.off_c = p_.off_cc, cg.off_z = p_.off_cz;
    CompressorWeights& gc = *g_.weights.compressor;
    compress_backward(p_, cg, s_, raw_.data(), dent_.data(), draw_.data(), gc.position_bias.ptr(), gc.kv_norm.ptr());
  }

  // dx and the input-side weights from the raw projections' gradients; W_ob's
  // from dy and the saved grouped rows (one GEMM over all tokens).
  void input_side(float* dx) {
    const int64_t d = c_.hidden_size, n = w_.n_raw, gd = c_.o_groups * c_.o_lora_rank;
    gemm_tn(d, gd, s_, dy_, d, t_.grouped.data(), gd, g_.weights.o_b_proj.ptr(), gd, 1.0f);
    gemm_nn(s_, d, n, draw_.data(), n, w_.raw, d, dx, d);
    auto grad = [&](Tensor& gw, int64_t off) {
      gemm_tn(gw.dim(0), d, s_, &draw_[off], n, x_, d, gw.ptr(), d, 1.0f);
    };
    grad(g_.weights.q_a_proj, 0);
    grad(g_.weights.kv_proj, p_.off_kv);
    if (p_.rate) {
      grad(g_.weights.compressor->kv_proj, p_.off_cc);
      grad(g_.weights.compressor->gate_proj, p_.off_cz);
    }
  }

  const PackedLayer& p_;
  const Config& c_;
  const DenseWeights& w_;
  const SeqTape& t_;
  const float *x_, *dy_;
  LayerGradients& g_;
  int64_t s_;
  std::vector<float>&raw_, &draw_, &cq_, &dcq_, &inv_cq_, &inv_kv_, &dkv_, &dent_, &dsink_;
  std::vector<float>&dgrouped_, &d_o_, &delta_, &qraw_, &q_, &inv_q_, &dq_;
};

}  // namespace

void backward_sequences(const PackedLayer& p, const TapeData& tape, const float* dy, LayerGradients& grads) {
  const int64_t b = static_cast<int64_t>(tape.seqs.size()), d = p.c.hidden_size;
  const int64_t s = b ? tape.seqs[0].len : 0;
  if (s == 0) return;
  thread_local Buffers buf;
  const DenseWeights w = dense_weights(p);
  for (int64_t i = 0; i < b; ++i)
    SeqBackward(p, w, tape.seqs[i], tape.x.data() + i * s * d, dy + i * s * d, grads, buf)
        .run(grads.dx.ptr() + i * s * d);
}

}  // namespace dsv4
