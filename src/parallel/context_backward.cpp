// Context-parallel backward (docs/distributed.md, "Backward"). Per call:
//
//   1. attend    each block: Layer::block_backward_attend — gradients of its
//                window rows (its halo's included) and of every entry before its end
//   2. entries   MPI_Alltoallv: each entry's gradients to the block that pooled
//                it, added there after its own in block order
//   3. compress  each block: Layer::block_backward_compress — C and Z of the
//                windows it pooled, halo rows included
//   4. rows      MPI_Alltoallv (the forward's halo, reversed): each halo row's
//                gradients to the block that holds the row, added in block order
//   5. project   each block: Layer::block_backward_project — dx of its tokens
//   6. weights   every rank's sum, then a fixed binary tree and a broadcast
//
// Sums run in block position order (queries before later queries, as the
// single process adds them, but in per-block partial sums): fixed for a rank
// count, independent of the thread count.
#include <cmath>

#include "parallel/context_blocks.h"
#include "parallel/context_tape.h"

namespace dsv4 {
namespace {

// Rows [lo, hi) of block `from`'s gradients, added into block `to`'s rows
// (entry ids or positions, as the exchange's accessors say).
struct Flow {
  size_t from = 0, to = 0;  // indices in context_blocks()
  int64_t lo = 0, hi = 0;
};

// A local block's row `r` of the exchanged buffer (nullptr: not this rank's).
using RowAt = std::function<float*(size_t block, int64_t row)>;

// Every flow's rows from its sender to its receiver (one Alltoallv of rows of
// `width` floats), then each receiver adds them flow after flow, in the flows'
// order (by receiving block, then sending block: position order).
void send_and_add(const std::vector<TokenBlock>& all, const std::vector<Flow>& flows, int64_t width, const RowAt& row,
                  MPI_Comm comm, int rank, int ranks, ContextStats& st) {
  std::vector<int> scount(ranks, 0), rcount(ranks, 0), sdisp(ranks, 0), rdisp(ranks, 0);
  std::vector<float> send, recv;
  for (int q = 0; q < ranks; ++q) {
    sdisp[q] = to_int(static_cast<int64_t>(send.size()) / std::max<int64_t>(1, width), "gradient rows");
    for (const Flow& f : flows)
      if (all[f.from].owner == rank && all[f.to].owner == q)
        for (int64_t r = f.lo; r < f.hi; ++r, ++scount[q])
          send.insert(send.end(), row(f.from, r), row(f.from, r) + width);
  }
  std::vector<int64_t> at(flows.size(), -1);  // each incoming flow's first row in recv
  int64_t total = 0;
  for (int q = 0; q < ranks; ++q) {
    rdisp[q] = to_int(total, "gradient rows");
    for (size_t i = 0; i < flows.size(); ++i)
      if (all[flows[i].to].owner == rank && all[flows[i].from].owner == q) {
        at[i] = total;
        total += flows[i].hi - flows[i].lo;
      }
    rcount[q] = to_int(total - rdisp[q], "gradient rows");
  }
  recv.resize(static_cast<size_t>(total * width));
  if (width > 0) {
    const RowType type(static_cast<size_t>(width) * sizeof(float));
    const double t0 = MPI_Wtime();
    MPI_Alltoallv(send.data(), scount.data(), sdisp.data(), type, recv.data(), rcount.data(), rdisp.data(), type, comm);
    st.exchange_s += MPI_Wtime() - t0;
  }
  for (size_t i = 0; i < flows.size(); ++i) {
    if (at[i] < 0) continue;
    const float* in = &recv[at[i] * width];
    for (int64_t r = flows[i].lo; r < flows[i].hi; ++r, in += width) {
      float* out = row(flows[i].to, r);
      for (int64_t c = 0; c < width; ++c) out[c] += in[c];
    }
  }
  st.bytes_sent += static_cast<int64_t>(send.size() * sizeof(float));
  st.bytes_received += static_cast<int64_t>(recv.size() * sizeof(float));
}

// Step 2's flows: block b's gradients of block c's entries [c.begin/m, c.end/m), c before b.
std::vector<Flow> entry_flows(const std::vector<TokenBlock>& all, int64_t rate) {
  std::vector<Flow> out;
  for (size_t c = 0; c < all.size(); ++c)
    for (size_t b = c + 1; b < all.size(); ++b) {
      const int64_t lo = all[c].begin / rate, hi = std::min(all[c].end, all[b].end) / rate;
      if (all[b].end > all[b].begin && lo < hi) out.push_back({b, c, lo, hi});
    }
  return out;
}

// Step 4's flows: the forward's halo pieces reversed, by holder, then sender.
std::vector<Flow> row_flows(const Layer& layer, const std::vector<TokenBlock>& all) {
  std::vector<Flow> out;
  for (const Piece& p : halo_pieces(layer, all))
    if (all[p.to].end > all[p.to].begin) out.push_back({p.to, p.from, p.begin, p.end});
  std::stable_sort(out.begin(), out.end(), [](const Flow& a, const Flow& b) { return a.to < b.to; });
  return out;
}

// Every rank's input, checked, then agreed on (no rank left in a collective).
void check_backward(const Layer& layer, const ContextTape& tape, const TensorView& dy, MPI_Comm comm, int rank,
                    int ranks) {
  const char* who = "context_parallel_backward";
  std::string refused;
  uint64_t call = 0;
  try {
    const ContextTapeData* t = tape.data();
    if (!t) fail(std::string(who) + ": the tape is empty (fill it with context_parallel_forward_train)");
    if (t->layer != &layer) fail(std::string(who) + ": the tape was recorded with another layer");
    if (t->ranks != ranks || t->rank != rank)
      fail(std::string(who) + ": the tape was recorded on rank " + std::to_string(t->rank) + " of " +
           std::to_string(t->ranks) + ", this is rank " + std::to_string(rank) + " of " + std::to_string(ranks));
    const int64_t d = layer.config().hidden_size;
    if (dy.shape != Shape{t->tokens, d})
      fail(std::string(who) + ": rank " + std::to_string(rank) + " holds " + std::to_string(t->tokens) +
           " tokens, dy must be [" + std::to_string(t->tokens) + ", " + std::to_string(d) + "], got " +
           shape_str(dy.shape));
    call = t->call;
    for (const ContextTapeData::Block& b : t->blocks)  // finite dy (the block's own check, before any data moves)
      for (const float* v = dy.data + b.row0 * d; v < dy.data + (b.row0 + b.block.end - b.block.begin) * d; ++v)
        if (!std::isfinite(*v))
          fail(std::string(who) + ": dy holds a non-finite value at row " + std::to_string((v - dy.data) / d));
  } catch (const std::exception& e) {
    refused = e.what();
  }
  agree(refused, comm, rank, who);
  uint64_t lo = call, hi = call;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, comm);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, comm);
  if (lo != hi)
    fail(std::string(who) + ": the ranks' tapes are from different context_parallel_forward_train calls (rank " +
         std::to_string(rank) + "'s is call " + std::to_string(call) + ")");
}

}  // namespace

LayerGradients context_parallel_backward(const Layer& layer, const ContextTape& tape, TensorView dy, MPI_Comm comm,
                                         ContextStats* stats) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  check_backward(layer, tape, dy, comm, rank, ranks);
  const ContextTapeData& t = *tape.data();
  const int64_t d = layer.config().hidden_size, rate = layer.config().compress_rate(layer.type());
  const std::vector<TokenBlock> all = context_blocks(t.seq, ranks, t.layout);
  ContextStats st;
  LayerGradients out = layer.zero_gradients();  // this rank's blocks add into it, one after the other
  out.dx = Tensor({t.tokens, d});
  std::vector<BlockGradients> g(t.blocks.size());
  auto local = [&](size_t global) -> size_t {
    for (size_t i = 0; i < t.blocks.size(); ++i)
      if (t.blocks[i].global == global) return i;
    fail("context_parallel_backward: block " + std::to_string(global) + " is not on rank " + std::to_string(rank));
  };
  auto each = [&](auto&& f) {  // the rank's non-empty blocks, in position order, timed
    const double t0 = MPI_Wtime();
    for (size_t i = 0; i < t.blocks.size(); ++i)
      if (!t.blocks[i].tape.empty()) f(t.blocks[i], g[i]);
    st.backward_s += MPI_Wtime() - t0;
  };

  each([&](const ContextTapeData::Block& b, BlockGradients& bg) {  // 1
    const TensorView dy_b(dy.data + b.row0 * d, {b.block.end - b.block.begin, d});
    layer.block_backward_attend(b.tape, dy_b, bg, out.weights);
  });
  if (rate) {  // 2
    const RowAt entry = [&](size_t block, int64_t id) {
      return g[local(block)].entries.ptr() + id * layer.config().head_dim;
    };
    send_and_add(all, entry_flows(all, rate), layer.config().head_dim, entry, comm, rank, ranks, st);
  }
  each([&](const ContextTapeData::Block& b, BlockGradients& bg) {
    layer.block_backward_compress(b.tape, bg, out.weights);
  });
  {  // 4
    const int64_t width = layer.token_row_width();
    int64_t columns = 0;  // the same on every rank: kv and the compressors' C and Z
    for (const BlockGradients& bg : g) columns = std::max(columns, bg.columns);
    MPI_Allreduce(MPI_IN_PLACE, &columns, 1, MPI_INT64_T, MPI_MAX, comm);
    const RowAt row = [&](size_t block, int64_t pos) {
      BlockGradients& bg = g[local(block)];
      return bg.rows.ptr() + (pos - layer.context_first(all[block].begin)) * width;
    };
    send_and_add(all, row_flows(layer, all), columns, row, comm, rank, ranks, st);
  }
  each([&](const ContextTapeData::Block& b, BlockGradients& bg) {  // 5
    layer.block_backward_project(b.tape, bg, out.weights);
    std::copy(bg.dx.data.begin(), bg.dx.data.end(), out.dx.data.begin() + b.row0 * d);
  });
  reduce_weights(out.weights, layer, comm, st);  // 6
  if (stats) *stats = st;
  return out;
}

}  // namespace dsv4
