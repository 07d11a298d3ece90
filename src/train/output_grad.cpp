// Backward of stage 5, the output: o_b, the grouped o_a and the de-rotation
// (BLAS; the rotation by the forward's RopeAngles).
#include "ops/blas.h"
#include "ops/rope.h"
#include "train/grad.h"

namespace dsv4 {

void output_backward(const PackedLayer& p, const DenseWeights& w, const SeqGrads& s, int64_t t0, int64_t t1,
                     QueryGrads& q, LayerWeights& g) {
  const Config& c = p.c;
  const int64_t n = t1 - t0, d = c.hidden_size, hd = c.head_dim, h_n = c.num_attention_heads;
  const int64_t ho = h_n * hd, gn = c.o_groups, dg = c.o_lora_rank, gd = gn * dg, gw = ho / gn;
  const float* o = s.tape->o.data() + t0 * ho;  // o_a's input as saved (after de-rotation)
  q.dgrouped.resize(static_cast<size_t>(n * gd));
  gemm_nn(n, gd, d, s.dy + t0 * d, d, w.ob, gd, q.dgrouped.data(), gd);
  q.d_o.resize(static_cast<size_t>(n * ho));
  for (int64_t i = 0; i < gn; ++i) {
    gemm_nn(n, gw, dg, &q.dgrouped[i * dg], gd, w.oa + i * dg * gw, gw, &q.d_o[i * gw], ho);
    gemm_tn(dg, gw, n, &q.dgrouped[i * dg], gd, o + i * gw, ho, g.o_a_proj.ptr() + i * dg * gw, gw, 1.0f);
  }
  // Δ = dO · o per head, in double (before rotating d_o back: the rotation is orthogonal)
  q.delta.resize(static_cast<size_t>(n * h_n));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n * h_n; ++r) {
    double acc = 0;
    const float *a = &q.d_o[r * hd], *b = o + r * hd;
    for (int64_t i = 0; i < hd; ++i) acc += static_cast<double>(a[i]) * b[i];
    q.delta[r] = static_cast<float>(acc);
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) RopeAngles(p.inv_freq, s.tape->p0 + t0 + r).rotate(&q.d_o[r * ho], h_n, hd);
}

}  // namespace dsv4
