// Backward of stage 2, the compressors. Entry w = RoPE(RMSNorm_w(e)) with, per
// channel, e = Σ_j p_j C_j and p = softmax_j(Z_j + B_j) over the window's slots:
//   dC_j = p_j de,   dZ_j = p_j (C_j − e) de,   dB_j = Σ_windows dZ_j.
// Each (token, channel) feeds exactly one entry, so entries run in parallel
// and write disjoint places; the sums over windows run in window order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/norm.h"
#include "ops/rope.h"
#include "train/grad.h"

namespace dsv4 {
namespace {

// One slot of an entry: the token whose C and Z it reads, their first column
// (channel ch reads column off + ch) and its position-bias row.
struct Slot {
  int64_t tok, off, bias_row;
};

// The entry's slots, the same for every channel; returns how many. tok: a row of raw.
int64_t slots_of(const CompressorGrad& g, int64_t w, Slot* out) {
  int64_t n = 0;
  for (int64_t j = 0; j < g.rate; ++j) {
    if (g.overlap && w > 0) out[n++] = {(w - 1) * g.rate + j - g.tok0, 0, j};  // series A of window w-1
    out[n++] = {w * g.rate + j - g.tok0, g.overlap ? g.width : 0, j};          // series B (or the only one)
  }
  return n;
}

}  // namespace

void compress_backward(const PackedLayer& p, const CompressorGrad& g, int64_t w0, int64_t w1, const float* raw,
                       const float* dent, float* draw, float* dbias, float* dnorm) {
  const int64_t n_t = w1 - w0, width = g.width, in_w = g.overlap ? 2 * width : width;
  const float* bias = g.w->position_bias.ptr();
  const float* norm = g.w->kv_norm.ptr();
  std::vector<float> pooled(static_cast<size_t>(n_t * width)), dy(static_cast<size_t>(n_t * width)), inv(n_t);
#pragma omp parallel
  {
    std::vector<Slot> sl(static_cast<size_t>(2 * g.rate));
    std::vector<float> prob(static_cast<size_t>(2 * g.rate * width)), de(static_cast<size_t>(width));
#pragma omp for schedule(static)
    for (int64_t i_t = 0; i_t < n_t; ++i_t) {
      const int64_t w = w0 + i_t, n = slots_of(g, w, sl.data());
      float* e = &pooled[i_t * width];
      for (int64_t ch = 0; ch < width; ++ch) {  // recompute the pooled value, keep the weights p
        float mx = -std::numeric_limits<float>::infinity(), den = 0;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t col = sl[i].off + ch;
          prob[i * width + ch] = raw[sl[i].tok * g.ld + g.off_z + col] + bias[sl[i].bias_row * in_w + col];
          mx = std::max(mx, prob[i * width + ch]);
        }
        e[ch] = 0;
        for (int64_t i = 0; i < n; ++i) {
          const float x = prob[i * width + ch] = std::exp(prob[i * width + ch] - mx);
          den += x;
          e[ch] += x * raw[sl[i].tok * g.ld + g.off_c + sl[i].off + ch];
        }
        e[ch] /= den;
        for (int64_t i = 0; i < n; ++i) prob[i * width + ch] /= den;
      }
      inv[i_t] = rms_inv(e, width, p.c.rms_norm_eps);
      float* d = &dy[i_t * width];
      std::copy_n(dent + w * width, width, d);
      rope_apply(d, width, p.inv_freq, w * g.rate, true);  // RoPE's transpose: rotate back
      rms_norm_backward(e, width, inv[i_t], norm, d, de.data());
      for (int64_t i = 0; i < n; ++i)
        for (int64_t ch = 0; ch < width; ++ch) {
          const int64_t at = sl[i].tok * g.ld + sl[i].off + ch;
          const float pj = prob[i * width + ch];
          draw[at + g.off_c] = pj * de[ch];
          draw[at + g.off_z] = pj * (raw[at + g.off_c] - e[ch]) * de[ch];
        }
    }
  }
  // dB[j, col]: the slot-j tokens' dZ, window after window: series B (or the
  // only series) of windows w0 .. w1-1, series A (CSA's first `width`
  // columns) of the windows before them, w0-1 .. w1-2.
  constexpr int64_t kBlock = 64;
  const int64_t a_cols = g.overlap ? width : 0;
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < in_w; c0 += kBlock) {
    const int64_t c1 = std::min(in_w, c0 + kBlock);
    std::vector<double> acc(static_cast<size_t>(g.rate * kBlock), 0.0);
    for (int64_t w = std::max<int64_t>(0, w0 - (g.overlap ? 1 : 0)); w < w1; ++w)
      for (int64_t j = 0; j < g.rate; ++j)
        for (int64_t col = c0; col < c1; ++col)
          if (col < a_cols ? w < w1 - 1 : w >= w0)
            acc[j * kBlock + col - c0] += draw[(w * g.rate + j - g.tok0) * g.ld + g.off_z + col];
    for (int64_t j = 0; j < g.rate; ++j)
      for (int64_t col = c0; col < c1; ++col) dbias[j * in_w + col] += static_cast<float>(acc[j * kBlock + col - c0]);
  }
  norm_weight_grad(n_t, width, dy.data(), width, pooled.data(), width, inv.data(), dnorm);
}

void compressor_backward(const PackedLayer& p, int64_t n_raw, SeqGrads& s, LayerWeights& g) {
  CompressorGrad cg;
  cg.w = &*p.w->compressor;
  cg.rate = p.rate, cg.width = p.c.head_dim, cg.overlap = p.type == LayerType::csa;
  cg.ld = n_raw, cg.off_c = p.off_comp_c, cg.off_z = p.off_comp_z;
  CompressorWeights& gc = *g.compressor;
  compress_backward(p, cg, 0, s.len / p.rate, s.raw.data(), s.dent.data(), s.draw.data(), gc.position_bias.ptr(),
                    gc.kv_norm.ptr());
}

void norm_weight_grad(int64_t rows, int64_t n, const float* dy, int64_t ldy, const float* x, int64_t ldx,
                      const float* inv, float* dw) {
  constexpr int64_t kBlock = 64;  // channels per work item: rows are read in order, a block at a time
#pragma omp parallel for schedule(static)
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    double acc[kBlock] = {};
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = i0; i < i1; ++i) acc[i - i0] += static_cast<double>(dy[r * ldy + i]) * (x[r * ldx + i] * inv[r]);
    for (int64_t i = i0; i < i1; ++i) dw[i] += static_cast<float>(acc[i - i0]);
  }
}

}  // namespace dsv4
