// Layer::backward: the chain rule through one layer, stage by stage in
// reverse pipeline order, one sequence at a time and queries in chunks.
//
// Saved by forward_train (pipeline/tape.h): x, the window rows, the entries, the
// CSA selection, o and the grouped projection. Recomputed here from x: the raw
// projections (c_q, kv, the compressors' C and Z: one GEMM), q per chunk, the
// attention probabilities per query and the pooled entries. Memory is the tape
// plus O(S·(r_q + D + compressor width)) and O(chunk·(H·D + (W + k)·D)) scratch.
#include <algorithm>

#include "dsv4/error.h"

#include "train/backward.h"
#include "train/grad.h"

namespace dsv4 {

namespace {

constexpr int64_t kQueryChunk = 512;  // queries per step of the output / attention / q backward

// The backward's scratch, kept per calling thread between calls (as the
// forward's workspace is): a warm call touches no new pages.
struct Buffers {
  SeqGrads seq;
  QueryGrads query;
};

// One sequence: the forward's stages mirrored, in reverse pipeline order.
void backward_sequence(const PackedLayer& p, const DenseWeights& w, SeqGrads& s, QueryGrads& q, float* dx,
                       LayerWeights& g) {
  queries_backward(p, w, s, q, g);
  // 3: index: the top-k selection is discrete; no gradient flows through it.
  if (p.rate) compressor_backward(p, w.n_raw, s, g);  // 2: compress
  project_backward(p, w, s, dx, g);                   // 1: project, x side
  output_weight_backward(p, s, g);                    // 5: W_ob, over all tokens at once
  sinks_backward(p, s, g);
}

}  // namespace

void queries_backward(const PackedLayer& p, const DenseWeights& w, SeqGrads& s, QueryGrads& q, LayerWeights& g) {
  const int64_t h_n = p.c.num_attention_heads;
  project_recompute(p, w.n_raw, s);
  for (int64_t t0 = 0; t0 < s.len; t0 += kQueryChunk) {
    const int64_t t1 = std::min(s.len, t0 + kQueryChunk);
    output_backward(p, w, s, t0, t1, q, g);  // 5: output
    project_q(p, s, t0, t1, q);              //    (q recomputed for the attention)
    attend_backward(p, *s.tape, t0, t1, q.q.data(), q.d_o.data(), q.delta.data(), q.dq.data(),  // 4: attend
                    &s.dsink[t0 * h_n], s.dkv.data(), s.dent.data());
    project_q_backward(p, w, t0, t1, q, s, g);  // 1: project, c_q side
  }
}

void sinks_backward(const PackedLayer& p, const SeqGrads& s, LayerWeights& g) {
  const int64_t h_n = p.c.num_attention_heads;
  for (int64_t t = 0; t < s.len; ++t)  // query after query
    for (int64_t h = 0; h < h_n; ++h) g.sinks.data[h] += s.dsink[t * h_n + h];
}

void check_trainable(const PackedLayer& p, const char* who) {
  if (p.numerics == Numerics::deployment)
    fail(std::string(who) +
         ": deployment numerics round to FP8/FP4, which has no gradient; build the layer with reference numerics for "
         "training");
}

void check_gradient_shapes(const PackedLayer& p, const LayerWeights& grads, const char* who) {
  for_each_weight(grads, p.c, p.type, [&](const WeightSpec& s, const Tensor& t) {
    if (t.shape != s.shape)
      fail(std::string(who) + ": gradient '" + s.name + "' to accumulate into has shape " + shape_str(t.shape) +
           ", expected " + shape_str(s.shape) + " (start from Layer::zero_gradients())");
  });
}

void backward_sequences(const PackedLayer& p, const TapeData& tape, const float* dy, LayerGradients& grads) {
  const int64_t d = p.c.hidden_size;
  if (tape.x.empty()) return;
  thread_local Buffers buf;
  const DenseWeights w = dense_weights(p);
  for (size_t i = 0; i < tape.seqs.size(); ++i) {  // in order: the weights' sums are fixed
    const int64_t s = tape.seqs[i].len, r0 = tape.cu[i];
    if (s == 0) continue;
    buf.seq.len = s, buf.seq.tape = &tape.seqs[i];
    buf.seq.x = tape.x.data() + r0 * d, buf.seq.dy = dy + r0 * d;
    backward_sequence(p, w, buf.seq, buf.query, grads.dx.ptr() + r0 * d, grads.weights);
  }
}

}  // namespace dsv4
