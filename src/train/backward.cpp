// Layer::backward: the chain rule through one layer, stage by stage in
// reverse pipeline order, sequences in groups (packed documents), each
// sequence's attention stages on their own and queries in chunks.
//
// Saved by forward_train (pipeline/tape.h): x, the window rows, the entries, the
// CSA selection, o and the grouped projection. Recomputed here from x: the raw
// projections (c_q, kv, the compressors' C and Z: one GEMM), q per chunk, the
// attention probabilities per query and the pooled entries. Memory is the tape
// plus O(max(S, 4096)·(r_q + D + compressor width)) and O(chunk·(H·D + (W + k)·D))
// scratch. Results are those of each sequence's backward alone, bit for bit:
// the group's GEMMs cut their tiles per sequence, and a weight's gradient adds
// the sequences' terms in order.
#include <algorithm>

#include "dsv4/error.h"

#include "train/backward.h"
#include "train/grad.h"

namespace dsv4 {

namespace {

constexpr int64_t kQueryChunk = 512;  // queries per step of the output / attention / q backward
// Rows of consecutive sequences taken at once (a longer sequence alone): the
// GEMMs that read or write every token run over all of them in one parallel
// region, each sequence in its own tiles. Scratch as for 4,096 tokens, the
// forward's row budget.
constexpr int64_t kGroupRows = 4096;

// The backward's scratch, kept per calling thread between calls (as the
// forward's workspace is): a warm call touches no new pages.
struct Buffers {
  GroupGrads group;
  QueryGrads query;
};

// One sequence's stages between the group's GEMMs, in reverse pipeline order.
void backward_sequence(const PackedLayer& p, const DenseWeights& w, SeqGrads& s, QueryGrads& q, LayerWeights& g) {
  queries_backward(p, w, s, q, g);
  // 3: index: the top-k selection is discrete; no gradient flows through it.
  if (p.rate) compressor_backward(p, w.n_raw, s, g);  // 2: compress
  project_norms_backward(p, w.n_raw, s, g);           // 1: project, x side (norms)
  sinks_backward(p, s, g);                            // 4: the sinks
}

// Sequences [first, last) of the tape: the x-side projections recomputed in
// one GEMM, each sequence's stages, then the token-local GEMMs (dx, the x-side
// weights' and o_b's gradients) over all of them.
void backward_group(const PackedLayer& p, const DenseWeights& w, const TapeData& tape, const float* dy, size_t first,
                    size_t last, Buffers& buf, LayerGradients& grads) {
  const int64_t d = p.c.hidden_size, r0 = tape.cu[first];
  GroupGrads& gg = buf.group;
  gg.seqs.clear(), gg.blocks.clear();
  gg.x = tape.x.data() + r0 * d, gg.dy = dy + r0 * d;
  for (size_t i = first; i < last; ++i) {
    const int64_t len = tape.seqs[i].len, at = tape.cu[i] - r0;
    if (len == 0) continue;
    SeqGrads& s = gg.seqs.emplace_back();
    s.len = len, s.tape = &tape.seqs[i], s.x = gg.x + at * d, s.dy = gg.dy + at * d;
    gg.blocks.push_back({at, len, false});
  }
  gg.rows = tape.cu[last] - r0;
  project_recompute(p, w.n_raw, gg);  // 1: project, recomputed
  for (SeqGrads& s : gg.seqs) backward_sequence(p, w, s, buf.query, grads.weights);
  token_gemms_backward(p, w, gg, grads.dx.ptr() + r0 * d, grads.weights);  // 1 and 5: x side, W_ob
}

}  // namespace

void queries_backward(const PackedLayer& p, const DenseWeights& w, SeqGrads& s, QueryGrads& q, LayerWeights& g) {
  const int64_t h_n = p.c.num_attention_heads;
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
  if (tape.x.empty()) return;
  thread_local Buffers buf;
  const DenseWeights w = dense_weights(p);
  // In order: every weight's gradient adds the sequences' terms one after the other.
  for (size_t first = 0; first < tape.seqs.size();) {
    size_t last = first + 1;
    while (last < tape.seqs.size() && tape.cu[last + 1] - tape.cu[first] <= kGroupRows) ++last;
    backward_group(p, w, tape, dy, first, last, buf, grads);
    first = last;
  }
}

}  // namespace dsv4
