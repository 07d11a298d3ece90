// The backward's stages (internal), in reverse pipeline order:
//
//   output   : o_b, grouped o_a, de-rotation      (backward.cpp, BLAS)
//   attend   : sparse attention with the sink     (attend_grad.cpp)
//   compress : entries' RoPE, norm and pooling    (compress_grad.cpp)
//   project  : q / kv norms, RoPE, projections    (backward.cpp, BLAS)
//
// Every gradient that sums over tokens or queries does so in a fixed order
// (token order, or BLAS within one fixed tile), so results never depend on
// the thread count.
#pragma once
#include <cstdint>

#include "pipeline/pipeline.h"
#include "pipeline/tape.h"

namespace dsv4 {

// Backward of the attention of queries [t0, t1) of one sequence. q and d_o
// ([t1-t0, H·D]) are the roped queries and the gradient of the attention
// output before de-rotation; delta [t1-t0, H] = Σ_j P_j dP_j per head, which
// is dO · o (computed from the saved o, as FlashAttention-2 does: no
// cancellation-prone sum over the keys). Writes dq (w.r.t. the roped q) and dsink
// ([t1-t0, H], each query's share of the sinks' gradient); adds the keys'
// gradients (key and value: K = V) into dkv [S, D] and dent [T, D], in query order.
void attend_backward(const PackedLayer& p, const SeqTape& tape, int64_t t0, int64_t t1, const float* q,
                     const float* d_o, const float* delta, float* dq, float* dsink, float* dkv, float* dent);

// Backward of a compressor's T = S / rate entries. dent [T, width]: gradient of
// the entries (after norm and RoPE). raw holds every token's C and Z rows
// (columns off_c, off_z, row stride ld); draw gets their gradients at the same
// places (tokens in no complete window: untouched). Adds the position bias's
// and the norm weight's gradients to dbias [rate, in_width] and dnorm [width].
struct CompressorGrad {
  const CompressorWeights* w = nullptr;
  int64_t rate = 0, width = 0;
  bool overlap = false;
  int64_t ld = 0, off_c = 0, off_z = 0;
};
void compress_backward(const PackedLayer& p, const CompressorGrad& g, int64_t s_len, const float* raw,
                       const float* dent, float* draw, float* dbias, float* dnorm);

// dw[i] += Σ_r dy[r, i] · x[r, i] · inv[r] over rows in order (an RMSNorm weight's gradient).
void norm_weight_grad(int64_t rows, int64_t n, const float* dy, int64_t ldy, const float* x, int64_t ldx,
                      const float* inv, float* dw);

}  // namespace dsv4
