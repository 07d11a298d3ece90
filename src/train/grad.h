// The backward's stages (internal), each the mirror of a forward stage,
// called by backward.cpp per sequence in reverse pipeline order:
//
//   output   : o_b, grouped o_a, de-rotation              (output_grad.cpp)
//   attend   : sparse attention with the sink             (attend_grad.cpp)
//   index    : none: the CSA top-k selection is discrete, so no gradient
//              flows through the lightning indexer (its weights get zero)
//   compress : entries' RoPE, norm and pooling            (compress_grad.cpp)
//   project  : q, kv and c_q norms and RoPE, projections  (project_grad.cpp)
//
// What the forward did not save is recomputed with the forward's own helpers
// (pipeline/pipeline.h: norm_cq, norm_rope_q; ops: RopeAngles, rms_inv).
// Every gradient that sums over tokens or queries does so in a fixed order
// (token order, or BLAS within one fixed tile), so results never depend on
// the thread count.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "dsv4/train.h"
#include "pipeline/pipeline.h"
#include "pipeline/tape.h"

namespace dsv4 {

// The projection matrices as fp32 (views of f32 layers, dequantised copies otherwise).
struct DenseWeights {
  std::vector<float> buf[4];
  const float *raw = nullptr, *qb = nullptr, *oa = nullptr, *ob = nullptr;
  int64_t n_raw = 0;  // rows of [W_qa; W_kv; W_ckv; W_cg] (w_in without the indexer)
};
DenseWeights dense_weights(const PackedLayer& p);

// One sequence: its input, dy, what is recomputed from x and the gradients
// passed between the stages: views of its rows of the group's buffers.
struct SeqGrads {
  int64_t len = 0;
  const float* x = nullptr;   // [S, d]
  const float* dy = nullptr;  // [S, d]
  const SeqTape* tape = nullptr;
  std::span<float> raw;             // [S, n_raw]  x-side projections before the norms: c_q | kv | C | Z
  std::span<float> cq;              // [S, r_q]    c_q after its norm
  std::span<float> inv_cq, inv_kv;  // [S]    the norms' 1/rms
  std::span<float> draw;            // [S, n_raw]  gradients of raw
  std::span<float> dcq;             // [S, r_q]    of c_q (normed)
  std::span<float> dkv;             // [kv rows, D] of the window rows (kv after norm and RoPE; tape->kv0 on)
  std::span<float> dent;            // [T, D]      of the compressed entries
  std::span<float> dsink;           // [S, H]      each query's share of the sinks' gradient
};

// A group of consecutive sequences (packed documents), their rows side by side:
// the buffers the SeqGrads view (kept per calling thread between calls), and
// the sequences' row blocks for the GEMMs that read or write every token.
struct GroupGrads {
  std::vector<SeqGrads> seqs;
  std::vector<RowGroup> blocks;  // sequence i: rows [row0, row0 + len) of the group
  int64_t rows = 0;
  const float* x = nullptr;   // [rows, d]
  const float* dy = nullptr;  // [rows, d]
  std::vector<float> raw, cq, inv_cq, inv_kv, draw, dcq, dkv, dent, dsink;
};

// One chunk of queries [t0, t1) (n = t1 - t0 rows).
struct QueryGrads {
  std::vector<float> dgrouped;  // [n, g·d_g]  of o_b's input
  std::vector<float> d_o;       // [n, H·D]    of the attention output before de-rotation
  std::vector<float> delta;     // [n, H]      Δ = dO · o per head (FlashAttention-2's)
  std::vector<float> qraw, q;   // [n, H·D]    q before and after its norm and RoPE (recomputed)
  std::vector<float> inv_q;     // [n, H]      its norms' 1/rms
  std::vector<float> dq;        // [n, H·D]    of q (roped)
};

// Stage 1 recomputed for a group: the x-side projections of every token (one
// GEMM over the sequences' own tiles), c_q, the norms' 1/rms; the gradient
// buffers zeroed; each SeqGrads pointed at its rows.
void project_recompute(const PackedLayer& p, int64_t n_raw, GroupGrads& gg);
// Stages 5, 4 and 1's c_q side for every query of s, in chunks, after
// project_recompute: fills s.dkv, s.dent, s.dcq, s.dsink and adds W_oa's and W_qb's gradients.
void queries_backward(const PackedLayer& p, const DenseWeights& w, SeqGrads& s, QueryGrads& q, LayerWeights& g);
// The sinks' gradient from s.dsink, query after query.
void sinks_backward(const PackedLayer& p, const SeqGrads& s, LayerWeights& g);
// ... and q of queries [t0, t1) from c_q (up-projection, per-head norm, RoPE); sizes q.dq.
void project_q(const PackedLayer& p, const SeqGrads& s, int64_t t0, int64_t t1, QueryGrads& q);

// Stage 5 for queries [t0, t1): dgrouped = dy W_ob; per group d_o = dgrouped
// W_oa (dW_oa += dgroupedᵀ o); Δ = d_o · o; then d_o rotated by +t, the
// transpose of the de-rotation.
void output_backward(const PackedLayer& p, const DenseWeights& w, const SeqGrads& s, int64_t t0, int64_t t1,
                     QueryGrads& q, LayerWeights& g);
// Stage 4 for queries [t0, t1) (rows of the tape: positions tape.p0 + t0 ..). q and d_o ([t1-t0, H·D]) are the roped
// queries and the gradient of the attention output before de-rotation; delta
// [t1-t0, H] = Σ_j P_j dP_j per head, which is dO · o (computed from the saved
// o, as FlashAttention-2 does: no cancellation-prone sum over the keys).
// Writes dq (w.r.t. the roped q) and dsink ([t1-t0, H], each query's share of
// the sinks' gradient); adds the keys' gradients (key and value: K = V) into
// dkv (tape.kv's rows) and dent [T, D], in query order.
void attend_backward(const PackedLayer& p, const SeqTape& tape, int64_t t0, int64_t t1, const float* q,
                     const float* d_o, const float* delta, float* dq, float* dsink, float* dkv, float* dent);

// Stage 2: backward of a compressor's entries w0 .. w1-1 (a sequence's T = S /
// rate: 0 .. T-1; a context-parallel block's own). dent [w1, width]: gradient
// of the entries (after norm and RoPE). raw holds the C and Z rows of the
// windows' tokens (columns off_c, off_z, row stride ld; row 0 is position
// tok0); draw gets their gradients at the same places (other tokens'
// untouched). Adds the position bias's and the norm weight's gradients to
// dbias [rate, in_width] and dnorm [width].
struct CompressorGrad {
  const CompressorWeights* w = nullptr;
  int64_t rate = 0, width = 0;
  bool overlap = false;
  int64_t ld = 0, off_c = 0, off_z = 0, tok0 = 0;
};
void compress_backward(const PackedLayer& p, const CompressorGrad& g, int64_t w0, int64_t w1, const float* raw,
                       const float* dent, float* draw, float* dbias, float* dnorm);
// The layer's main compressor: its C/Z columns of s.raw, gradients into s.draw and g.
void compressor_backward(const PackedLayer& p, int64_t n_raw, SeqGrads& s, LayerWeights& g);

// Stage 1 backward, c_q side, queries [t0, t1): q's RoPE and per-head norm
// back, then dc_q = dq W_qb and dW_qb += dqᵀ c_q.
void project_q_backward(const PackedLayer& p, const DenseWeights& w, int64_t t0, int64_t t1, QueryGrads& q, SeqGrads& s,
                        LayerWeights& g);
// Stage 1 backward, x side, per sequence: kv's RoPE and norm and c_q's norm
// back (with their weights' gradients) into draw.
void project_norms_backward(const PackedLayer& p, int64_t n_raw, SeqGrads& s, LayerWeights& g);
// ... then for the whole group: dx = d(raw) · W_raw (one GEMM over the
// sequences' own tiles), and the token-local weights' gradients (each x-side
// weight's and o_b's: dW += dYᵀ X) in one parallel region, each weight's terms
// added sequence after sequence — the bits of the sequences' backwards in order.
// with_ob false: not o_b's (a context-parallel block adds it in its attend step).
void token_gemms_backward(const PackedLayer& p, const DenseWeights& w, const GroupGrads& gg, float* dx, LayerWeights& g,
                          bool with_ob = true);
// o_b's gradient alone, dW_ob += dyᵀ grouped over one sequence's tokens (as token_gemms_backward adds it).
void output_weight_backward(const PackedLayer& p, const SeqGrads& s, LayerWeights& g);

// dw[i] += Σ_r dy[r, i] · x[r, i] · inv[r] over rows in order (an RMSNorm weight's gradient).
void norm_weight_grad(int64_t rows, int64_t n, const float* dy, int64_t ldy, const float* x, int64_t ldx,
                      const float* inv, float* dw);

}  // namespace dsv4
