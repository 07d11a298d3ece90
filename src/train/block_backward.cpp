// A context-parallel block's backward (Layer::block_backward_*): the one-shot
// backward's stages (backward.cpp) on the block's queries, cut where gradients
// cross to keys other blocks own:
//
//   attend    stages 5, 4, 1 (c_q side) of the block's queries, W_ob, the sinks:
//             gradients of the window rows [kv0, end) and of entries [0, end/m)
//   (caller)  the entries' gradients summed at the blocks that pooled them
//   compress  stage 2 for the block's own entries: C and Z of its token rows,
//             halo rows included (a window that straddles the block start)
//   (caller)  the halo rows' gradients summed at the rows' owners
//   project   stage 1, x side, for the block's own tokens: dx
#include <algorithm>

#include "train/backward.h"
#include "train/grad.h"

namespace dsv4 {

struct BlockWork {
  GroupGrads group;  // one sequence, the block's own tokens: raw, c_q, the norms and dc_q kept for the project step
  const TapeData* tape = nullptr;  // whose
  int step = 0;                    // steps done
};

BlockGradients::BlockGradients() = default;
BlockGradients::~BlockGradients() = default;
BlockGradients::BlockGradients(BlockGradients&&) noexcept = default;
BlockGradients& BlockGradients::operator=(BlockGradients&&) noexcept = default;

int block_step(const BlockGradients& g, const TapeData& tape) {
  if (!g.work) return 0;
  return g.work->tape == &tape ? g.work->step : -1;
}

namespace {

int64_t token_width(const PackedLayer& p) { return p.n_in - p.off_kv; }

}  // namespace

void block_attend(const PackedLayer& p, const TapeData& tape, const float* dy, BlockGradients& g, LayerWeights& w) {
  const SeqTape& t = tape.seqs[0];
  const int64_t hd = p.c.head_dim, width = token_width(p);
  if (!g.work) g.work = std::make_unique<BlockWork>();
  g.work->tape = &tape;
  GroupGrads& gg = g.work->group;
  gg.seqs.assign(1, SeqGrads{});
  gg.blocks.assign(1, RowGroup{0, t.len, false});
  gg.rows = t.len, gg.x = tape.x.data(), gg.dy = dy;
  SeqGrads& s = gg.seqs[0];
  s.len = t.len, s.tape = &t, s.x = gg.x, s.dy = dy;
  const DenseWeights dw = dense_weights(p);
  project_recompute(p, dw.n_raw, gg);
  thread_local QueryGrads query;  // the calling thread's, kept between blocks (no new pages when warm)
  queries_backward(p, dw, s, query, w);
  output_weight_backward(p, s, w);  // here: dy is the caller's, not kept
  sinks_backward(p, s, w);
  s.dy = gg.dy = nullptr;
  g.entries = Tensor({t.entries.rows(), hd}, std::vector<float>(s.dent.begin(), s.dent.end()));
  gg.dent = {}, s.dent = {};
  g.rows = Tensor({t.p0 + t.len - tape.rows_first, width});
  g.columns = dw.n_raw - p.off_kv;
  const int64_t kv_rows = static_cast<int64_t>(s.dkv.size()) / hd, at = t.kv0 - tape.rows_first;
  for (int64_t r = 0; r < kv_rows; ++r) std::copy_n(&s.dkv[r * hd], hd, &g.rows.data[(at + r) * width]);
  g.work->step = 1;
}

void block_compress(const PackedLayer& p, const TapeData& tape, BlockGradients& g, LayerWeights& w) {
  const SeqTape& t = tape.seqs[0];
  if (p.rate) {
    CompressorGrad cg;
    cg.w = &*p.w->compressor;
    cg.rate = p.rate, cg.width = p.c.head_dim, cg.overlap = p.type == LayerType::csa;
    cg.ld = token_width(p), cg.off_c = p.off_comp_c - p.off_kv, cg.off_z = p.off_comp_z - p.off_kv;
    cg.tok0 = tape.rows_first;
    CompressorWeights& gc = *w.compressor;
    compress_backward(p, cg, t.p0 / p.rate, (t.p0 + t.len) / p.rate, tape.rows.data(), g.entries.ptr(), g.rows.ptr(),
                      gc.position_bias.ptr(), gc.kv_norm.ptr());
  }
  g.work->step = 2;
}

void block_project(const PackedLayer& p, const TapeData& tape, BlockGradients& g, LayerWeights& w) {
  const SeqTape& t = tape.seqs[0];
  GroupGrads& gg = g.work->group;
  SeqGrads& s = gg.seqs[0];
  const int64_t hd = p.c.head_dim, width = token_width(p), own = t.p0 - tape.rows_first;
  const DenseWeights dw = dense_weights(p);
  const int64_t n_raw = dw.n_raw, comp = n_raw - p.off_comp_c;  // C and Z columns (none: sliding)
  float* dkv = &s.dkv[(t.p0 - t.kv0) * hd];
  for (int64_t i = 0; i < t.len; ++i) {  // the own rows, every block's share summed by the caller
    const float* r = &g.rows.data[(own + i) * width];
    std::copy_n(r, hd, &dkv[i * hd]);
    if (comp > 0) std::copy_n(r + (p.off_comp_c - p.off_kv), comp, &s.draw[i * n_raw + p.off_comp_c]);
  }
  g.dx = Tensor({t.len, p.c.hidden_size});
  project_norms_backward(p, n_raw, s, w);
  token_gemms_backward(p, dw, gg, g.dx.ptr(), w, false);  // o_b's gradient came with the attend step
  g.work.reset();                                         // done: the block's scratch goes
}

}  // namespace dsv4
