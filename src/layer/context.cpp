// Context parallelism, the part without a transport: what one block of a
// sequence needs from the tokens before it (docs/distributed.md). A block
// [begin, end) is a chunk that continues the state at `begin`; that state is
// the window's last W-1 kv rows, the compressors' pending and series-A rows
// (all within the halo) and the entries before the block (computed by the
// blocks that hold their windows' ends, then exchanged).
#include <algorithm>
#include <numeric>

#include "common/finite.h"
#include "dsv4/layer.h"
#include "pipeline/job.h"
#include "train/backward.h"

namespace dsv4 {
namespace {

// First position of the compressor rows a state at `begin` holds: the
// incomplete window, and for an overlapping (CSA) compressor the window before
// it (its series A; the entry it pools here is wrong and gets replaced).
int64_t compressor_first(int64_t begin, int64_t rate, bool overlapping) {
  return std::max<int64_t>(0, begin / rate * rate - (overlapping ? rate : 0));
}

// One compressor of the block: `state` gets the rows [from, begin) (entries
// before them as zero rows), `owned` the entries of the windows that complete
// in (begin, end]. rows: token rows of [first, end), row stride ld.
void compress_block(const PackedLayer& p, const CompressorWeights& w, const float* rows, int64_t ld, int64_t off_c,
                    int64_t off_z, int64_t first, int64_t begin, int64_t end, CompressorState& state, RowStore& owned) {
  const int64_t m = p.rate, from = compressor_first(begin, m, state.overlapping);
  const float* at = end > from ? rows + (from - first) * ld : nullptr;  // none: nothing is fed
  const float* c = at ? at + off_c : nullptr;
  const float* z = at ? at + off_z : nullptr;
  CompressorState own = state;  // still empty
  state.emitted = from / m;
  state.entries.assign(from / m);
  compress_feed(p, w, state, c, z, ld, begin - from);
  own.emitted = from / m;
  compress_feed(p, w, own, c, z, ld, end - from, from / m);
  const int64_t skip = begin / m - from / m, count = end / m - begin / m;
  owned.resize_like(own.entries, count);
  for (int64_t i = 0; i < count; ++i) owned.copy_row(i, own.entries, skip + i);
}

}  // namespace

int64_t Layer::context_first(int64_t begin) const {
  const int64_t window_first = std::max<int64_t>(0, begin - (config_.sliding_window - 1));
  if (!packed_->rate) return window_first;
  return std::min(window_first, compressor_first(begin, packed_->rate, type_ == LayerType::csa));
}

// Token rows are the x-side projection's columns after c_q: kv | C, Z | C_I, Z_I | indexer head weights.
int64_t Layer::token_row_width() const { return packed_->n_in - packed_->off_kv; }
int64_t Layer::projected_width() const { return packed_->n_in; }

Tensor Layer::project_rows(TensorView x, int64_t begin) const {
  const PackedLayer& p = *packed_;
  const int64_t d = config_.hidden_size, n = x.shape.size() == 2 ? x.dim(0) : -1;
  if (n < 0 || x.dim(1) != d || begin < 0)
    fail("token_rows: x must be [n, " + std::to_string(d) + "] at a position >= 0, got " + shape_str(x.shape) + " at " +
         std::to_string(begin));
  check_finite(x.data, x.numel(), "token_rows: input hidden_states");
  Tensor out({n, p.n_in});
  Projected pr;
  std::vector<int64_t> pos(static_cast<size_t>(std::min(n, kPrefillChunk)));
  for (int64_t s0 = 0; s0 < n; s0 += kPrefillChunk) {  // the pieces of run_jobs
    const int64_t len = std::min(kPrefillChunk, n - s0);
    std::iota(pos.begin(), pos.begin() + len, begin + s0);
    project(p, x.data + s0 * d, len, pos.data(), {RowGroup{0, len, len <= kShortChunk}}, pr, false);
    std::copy_n(pr.in.data(), len * p.n_in, &out.data[s0 * p.n_in]);
  }
  return out;
}

Tensor Layer::token_rows(TensorView x, int64_t begin) const {
  const Tensor all = project_rows(x, begin);
  const int64_t n = all.dim(0), w = token_row_width(), skip = packed_->off_kv;
  Tensor out({n, w});
  for (int64_t i = 0; i < n; ++i) std::copy_n(&all.data[i * packed_->n_in + skip], w, &out.data[i * w]);
  return out;
}

Tensor Layer::forward_projected(TensorView projected, LayerState& state) const {
  const int64_t n = projected.shape.size() == 2 ? projected.dim(0) : -1;
  if (n < 0 || projected.dim(1) != packed_->n_in)
    fail("forward_projected: rows must be [n, " + std::to_string(packed_->n_in) + "], got " +
         shape_str(projected.shape));
  if (!state.fits(config_, type_, numerics())) fail("forward_projected: the state was made for another layer");
  Tensor out({n, config_.hidden_size});
  if (n == 0) return out;
  std::vector<Job> jobs{Job(nullptr, n, &state, out.ptr())};
  jobs[0].projected = projected.data;
  run_jobs(*packed_, jobs, nullptr);
  return out;
}

LayerState Layer::block_state(TensorView rows, int64_t first, int64_t begin, int64_t end, BlockEntries& owned) const {
  const PackedLayer& p = *packed_;
  const int64_t hd = config_.head_dim, n = end - first, w = token_row_width();
  if (begin < 0 || begin > end || first != context_first(begin))
    fail("block_state: block [" + std::to_string(begin) + ", " + std::to_string(end) + ") needs its rows from " +
         std::to_string(begin < 0 ? 0 : context_first(begin)) + ", got them from " + std::to_string(first));
  if (rows.shape != Shape{n, w})
    fail("block_state: rows must be [" + std::to_string(n) + ", " + std::to_string(w) + "], got " +
         shape_str(rows.shape));
  LayerState st = new_state();
  const int64_t slots = st.window_slots();
  std::vector<float> row(static_cast<size_t>(hd));
  for (int64_t q = std::max(first, begin - slots); q < begin; ++q) {
    std::copy_n(rows.data + (q - first) * w, hd, row.data());  // kv comes first
    st.window().put(q % slots, row.data());
  }
  owned = BlockEntries{};
  owned.first = p.rate ? begin / p.rate : 0;
  owned.count = p.rate ? end / p.rate - owned.first : 0;
  const LayerWeights& lw = weights_;
  if (lw.compressor)
    compress_block(p, *lw.compressor, rows.data, w, p.off_comp_c - p.off_kv, p.off_comp_z - p.off_kv, first, begin, end,
                   st.compressor(), owned.main);
  if (lw.indexer)
    compress_block(p, lw.indexer->compressor, rows.data, w, p.off_index_c - p.off_kv, p.off_index_z - p.off_kv, first,
                   begin, end, st.indexer(), owned.index);
  st.advance(begin);
  return st;
}

// Training a block: the forward through its state, recording the tape at the
// block's positions; the window rows before the block come from `rows`.
Tensor Layer::forward_train(TensorView x, LayerState& state, TensorView rows, Tape& tape) const {
  const PackedLayer& p = *packed_;
  check_trainable(p, "forward_train");
  const int64_t d = config_.hidden_size, hd = config_.head_dim, w = token_row_width();
  if (x.shape.size() != 2 || x.dim(1) != d)
    fail("forward_train: a block's x must be [n, " + std::to_string(d) + "], got " + shape_str(x.shape));
  if (!state.fits(config_, type_, numerics()))
    fail("forward_train: the state was made for another layer (type, dimensions or numerics)");
  const int64_t n = x.dim(0), begin = state.position(), first = context_first(begin);
  if (rows.shape != Shape{begin + n - first, w})
    fail("forward_train: the block [" + std::to_string(begin) + ", " + std::to_string(begin + n) +
         ") needs token rows [" + std::to_string(begin + n - first) + ", " + std::to_string(w) + "] from position " +
         std::to_string(first) + ", got " + shape_str(rows.shape));
  check_finite(x.data, x.numel(), "forward_train: input hidden_states");
  if (!tape.d_) tape.d_ = std::make_unique<TapeData>();
  TapeData& td = *tape.d_;
  td.layer = &p, td.x_shape = {n, d}, td.x.assign(x.data, x.data + x.numel()), td.cu = {0, n};
  td.block = true, td.rows_first = first, td.rows.assign(rows.data, rows.data + rows.numel());
  td.seqs.resize(1);
  SeqTape& t = td.seqs[0];
  size_seq_tape(p, n, t, begin);
  for (int64_t q = t.kv0; q < begin; ++q) std::copy_n(rows.data + (q - first) * w, hd, &t.kv[(q - t.kv0) * hd]);
  Tensor out({n, d});
  std::vector<Job> jobs{Job(x.data, n, &state, out.ptr())};
  jobs[0].tape = &t;
  if (n > 0) run_jobs(p, jobs, nullptr);
  if (p.rate) t.entries = state.compressor().entries;
  return out;
}

namespace {

const TapeData& block_tape(const PackedLayer& p, const Tape& tape, const char* who) {
  const TapeData* td = tape.data();
  if (!td) fail(std::string(who) + ": the tape is empty (fill it with a block's forward_train first)");
  if (td->layer != &p) fail(std::string(who) + ": the tape was recorded by another layer");
  if (!td->block) fail(std::string(who) + ": the tape is a one-shot forward_train's, not a block's");
  return *td;
}

// The steps run in order: attend, compress, project; `done` of them before
// `who`, on this tape, with the shapes attend gave.
void check_step(const BlockGradients& g, const TapeData& td, int done, int64_t hd, int64_t width, const char* who) {
  const int step = block_step(g, td);
  if (step < 0) fail(std::string(who) + ": the gradients are another tape's");
  if (step != done)
    fail(std::string(who) + ": call " + (done == 1 ? "block_backward_attend" : "block_backward_compress") +
         " on these gradients first (the steps run in order: attend, compress, project)");
  const SeqTape& t = td.seqs[0];
  if (g.entries.shape != Shape{t.entries.rows(), hd} || g.rows.shape != Shape{t.p0 + t.len - td.rows_first, width})
    fail(std::string(who) + ": the gradients' entries or rows changed shape since block_backward_attend");
}

}  // namespace

void Layer::block_backward_attend(const Tape& tape, TensorView dy, BlockGradients& g, LayerWeights& weights) const {
  const TapeData& td = block_tape(*packed_, tape, "block_backward_attend");
  if (dy.shape != td.x_shape)
    fail("block_backward_attend: dy has shape " + shape_str(dy.shape) + ", the block's output " +
         shape_str(td.x_shape));
  check_finite(dy.data, dy.numel(), "block_backward_attend: dy");
  check_gradient_shapes(*packed_, weights, "block_backward_attend");
  g = BlockGradients{};
  block_attend(*packed_, td, dy.data, g, weights);
}

void Layer::block_backward_compress(const Tape& tape, BlockGradients& g, LayerWeights& weights) const {
  const TapeData& td = block_tape(*packed_, tape, "block_backward_compress");
  check_step(g, td, 1, config_.head_dim, token_row_width(), "block_backward_compress");
  check_gradient_shapes(*packed_, weights, "block_backward_compress");
  block_compress(*packed_, td, g, weights);
}

void Layer::block_backward_project(const Tape& tape, BlockGradients& g, LayerWeights& weights) const {
  const TapeData& td = block_tape(*packed_, tape, "block_backward_project");
  check_step(g, td, 2, config_.head_dim, token_row_width(), "block_backward_project");
  check_gradient_shapes(*packed_, weights, "block_backward_project");
  block_project(*packed_, td, g, weights);
}

}  // namespace dsv4
