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

}  // namespace dsv4
