// Context parallelism on MPI (docs/distributed.md). Per call:
//
//   1. rows     Layer::project_rows: each block's x-side rows, projected as its
//               forward would (the same bits); they end with its token rows (kv,
//               compressor C/Z)
//   2. halo     MPI_Alltoallv: each block gets the token rows [context_first(begin),
//               begin) from the blocks that hold them (more than one when blocks are
//               short); then Layer::block_state: the block's state at `begin` (less
//               the entries before it) and the entries its own windows complete
//   3. entries  MPI_Allgatherv per block slot: every block's entries (CSA: and
//               indexer keys), as stored, in id order
//   4. forward  each block through its state from its rows of step 1:
//               Layer::forward_projected (= Layer::forward(x, state), bit for bit)
//   5. state    (optional) the state after the last block, sent to root
#include <cstring>

#include "parallel/context_blocks.h"

namespace dsv4 {
namespace {

// Step 2: every local block's token rows [first, end): the halo from the
// other blocks (Alltoallv), then its own.
void exchange_halo(const Layer& layer, const std::vector<TokenBlock>& all, std::vector<Local>& mine, MPI_Comm comm,
                   int rank, int ranks, ContextStats& st) {
  const int64_t d = layer.token_row_width(), ld = layer.projected_width(), skip = ld - d;
  const std::vector<Piece> pieces = halo_pieces(layer, all);
  auto local_of = [&](size_t global) -> Local* {
    for (Local& l : mine)
      if (l.global == global) return &l;
    return nullptr;
  };
  auto row_of = [&](int64_t pos) -> const float* {  // a position this rank holds
    for (const Local& l : mine)
      if (pos >= l.block.begin && pos < l.block.end) return l.own.ptr() + (pos - l.block.begin) * ld + skip;
    fail("context parallel: position " + std::to_string(pos) + " is not on rank " + std::to_string(rank));
  };
  std::vector<int> scount(ranks, 0), rcount(ranks, 0), sdisp(ranks, 0), rdisp(ranks, 0);
  std::vector<float> send, recv;
  for (int q = 0, n = 0; q < ranks; ++q, n = 0) {
    sdisp[q] = to_int(static_cast<int64_t>(send.size()) / d, "halo rows");
    for (const Piece& p : pieces)
      if (p.src == rank && p.dst == q)
        for (int64_t pos = p.begin; pos < p.end; ++pos, ++n) send.insert(send.end(), row_of(pos), row_of(pos) + d);
    scount[q] = n;
  }
  int64_t total = 0;
  for (int q = 0; q < ranks; ++q) {
    rdisp[q] = to_int(total, "halo rows");
    for (const Piece& p : pieces)
      if (p.dst == rank && p.src == q) rcount[q] += static_cast<int>(p.end - p.begin);
    total += rcount[q];
  }
  recv.resize(static_cast<size_t>(total * d));
  for (Local& l : mine) {
    l.first = layer.context_first(l.block.begin);
    l.rows.assign(static_cast<size_t>((l.block.end - l.first) * d), 0.0f);
    for (int64_t pos = l.block.begin; pos < l.block.end; ++pos)
      std::copy_n(row_of(pos), d, l.rows.begin() + (pos - l.first) * d);
  }
  const RowType row(static_cast<size_t>(d) * sizeof(float));
  const double t0 = MPI_Wtime();
  MPI_Alltoallv(send.data(), scount.data(), sdisp.data(), row, recv.data(), rcount.data(), rdisp.data(), row, comm);
  st.exchange_s += MPI_Wtime() - t0;
  for (int q = 0; q < ranks; ++q) {
    int64_t at = rdisp[q];
    for (const Piece& p : pieces) {
      if (p.dst != rank || p.src != q) continue;
      Local* l = local_of(p.to);
      std::memcpy(&l->rows[(p.begin - l->first) * d], &recv[at * d], (p.end - p.begin) * d * sizeof(float));
      at += p.end - p.begin;
    }
  }
  st.bytes_sent += static_cast<int64_t>(send.size() * sizeof(float));
  st.bytes_received += static_cast<int64_t>(recv.size() * sizeof(float));
}

// Step 3 for one store (main entries or indexer keys): every block's rows, by
// id, gathered in one Allgatherv per block slot (zigzag: two). Returns [T rows].
std::vector<uint8_t> gather_entries(const std::vector<TokenBlock>& all, const std::vector<Local>& mine,
                                    RowStore BlockEntries::*store, int64_t rate, int64_t seq, MPI_Comm comm, int ranks,
                                    ContextStats& st) {
  const size_t rb = (mine.front().owned.*store).row_bytes();
  std::vector<uint8_t> out(static_cast<size_t>(seq / rate) * rb);
  const RowType row(rb);
  for (size_t slot = 0; slot < mine.size(); ++slot) {
    std::vector<int> count(ranks, 0), disp(ranks, 0);
    std::vector<size_t> seen(ranks, 0);  // each rank's blocks in position order: slot k is its k-th
    for (const TokenBlock& b : all)
      if (seen[b.owner]++ == slot) {
        count[b.owner] = to_int(b.end / rate - b.begin / rate, "entries");
        disp[b.owner] = to_int(b.begin / rate, "entries");
      }
    const RowStore& own = mine[slot].owned.*store;
    const double t0 = MPI_Wtime();
    MPI_Allgatherv(own.data(), static_cast<int>(own.rows()), row, out.data(), count.data(), disp.data(), row, comm);
    st.exchange_s += MPI_Wtime() - t0;
    int64_t total = 0;
    for (int c : count) total += c;
    st.bytes_sent += static_cast<int64_t>(own.rows() * rb * (ranks - 1));
    st.bytes_received += static_cast<int64_t>((total - own.rows()) * rb);
  }
  return out;
}

// Step 5: a state as bytes (every field; the receiver starts from new_state()).
template <class T>
void put(std::vector<uint8_t>& b, const T* p, size_t n) {
  const auto* c = reinterpret_cast<const uint8_t*>(p);
  b.insert(b.end(), c, c + n * sizeof(T));
}
template <class T>
void get(const uint8_t*& at, T* p, size_t n) {
  std::memcpy(p, at, n * sizeof(T));
  at += n * sizeof(T);
}
std::vector<CompressorState*> compressors(LayerState& s) { return {&s.compressor(), &s.indexer()}; }

std::vector<uint8_t> pack_state(LayerState& s) {
  std::vector<uint8_t> b;
  const int64_t pos = s.position();
  put(b, &pos, 1);
  put(b, s.window().data(), s.window().rows() * s.window().row_bytes());
  for (CompressorState* c : compressors(s)) {
    const int64_t head[3] = {c->pending, c->emitted, c->has_prev};
    put(b, head, 3);
    for (const std::vector<float>* v : {&c->pend_c, &c->pend_z, &c->prev_c, &c->prev_zb}) put(b, v->data(), v->size());
    put(b, c->entries.data(), c->emitted * c->entries.row_bytes());
  }
  return b;
}

void unpack_state(const std::vector<uint8_t>& b, LayerState& s) {
  const uint8_t* at = b.data();
  int64_t pos = 0;
  get(at, &pos, 1);
  get(at, s.window().data(), s.window().rows() * s.window().row_bytes());
  for (CompressorState* c : compressors(s)) {
    int64_t head[3];
    get(at, head, 3);
    c->pending = head[0], c->emitted = head[1], c->has_prev = head[2] != 0;
    for (std::vector<float>* v : {&c->pend_c, &c->pend_z, &c->prev_c, &c->prev_zb}) get(at, v->data(), v->size());
    c->entries.assign(c->emitted);
    get(at, c->entries.data(), c->emitted * c->entries.row_bytes());
  }
  s.advance(pos);
}

void send_state(LayerState* last, int holder, const Layer& layer, const ContextOptions& o, MPI_Comm comm, int rank,
                LayerState* out, ContextStats& st) {
  if (holder == o.root) {
    if (rank == o.root) *out = std::move(*last);
    return;
  }
  const double t0 = MPI_Wtime();
  if (rank == holder) {
    const std::vector<uint8_t> b = pack_state(*last);
    MPI_Send(b.data(), to_int(static_cast<int64_t>(b.size()), "state bytes"), MPI_BYTE, o.root, 0, comm);
    st.bytes_sent += static_cast<int64_t>(b.size());
  } else if (rank == o.root) {
    MPI_Status status;
    MPI_Probe(holder, 0, comm, &status);
    int n = 0;
    MPI_Get_count(&status, MPI_BYTE, &n);
    std::vector<uint8_t> b(static_cast<size_t>(n));
    MPI_Recv(b.data(), n, MPI_BYTE, holder, 0, comm, MPI_STATUS_IGNORE);
    *out = layer.new_state();
    unpack_state(b, *out);
    st.bytes_received += n;
  }
  st.exchange_s += MPI_Wtime() - t0;
}

}  // namespace

ContextLayout context_layout(const std::string& name) {
  if (name == "contiguous") return ContextLayout::contiguous;
  if (name == "zigzag") return ContextLayout::zigzag;
  fail("context layout '" + name + "': expected contiguous or zigzag");
}

std::vector<TokenBlock> context_blocks(int64_t seq, int ranks, ContextLayout layout) {
  if (ranks < 1 || seq < 0)
    fail("context_blocks: " + std::to_string(seq) + " tokens on " + std::to_string(ranks) + " ranks");
  const int64_t n = layout == ContextLayout::zigzag ? 2 * ranks : ranks;
  std::vector<TokenBlock> out;
  for (int64_t i = 0; i < n; ++i) {
    const int owner = static_cast<int>(i < ranks ? i : n - 1 - i);
    out.push_back({seq * i / n, seq * (i + 1) / n, owner});
  }
  return out;
}

std::vector<TokenBlock> rank_blocks(int64_t seq, int ranks, int rank, ContextLayout layout) {
  std::vector<TokenBlock> out;
  for (const TokenBlock& b : context_blocks(seq, ranks, layout))
    if (b.owner == rank) out.push_back(b);
  return out;
}

void agree(const std::string& refused, MPI_Comm comm, int rank, const char* who, std::optional<int64_t> seq) {
  const int64_t s = seq.value_or(0);
  int64_t v[3] = {refused.empty() ? 0 : 1, s, -s};  // any refused; max seq; -min seq
  MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT64_T, MPI_MAX, comm);
  if (!refused.empty()) fail(refused);
  if (v[0]) fail(std::string(who) + ": another rank refused its input (rank " + std::to_string(rank) + "'s is fine)");
  if (seq && v[1] != -v[2])
    fail(std::string(who) + ": the ranks disagree on seq (from " + std::to_string(-v[2]) + " to " +
         std::to_string(v[1]) + ")");
}

std::vector<Local> prepare_blocks(const Layer& layer, TensorView x, int64_t seq, MPI_Comm comm, ContextLayout layout,
                                  bool keep_rows, const std::function<void()>& check, const char* who,
                                  ContextStats& st) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  const int64_t d = layer.config().hidden_size;
  const std::vector<TokenBlock> all = context_blocks(seq, ranks, layout);
  std::vector<Local> mine;
  int64_t n = 0;
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i].owner == rank) {
      mine.push_back({});
      mine.back().block = all[i], mine.back().global = i, mine.back().row0 = n;
      n += all[i].end - all[i].begin;
    }
  // Inputs are checked on every rank, then agreed on: a rank that refuses its
  // input must not leave the others waiting in a collective.
  std::string refused;
  const double t0 = MPI_Wtime();
  try {
    if (x.shape != Shape{n, d})
      fail(std::string(who) + ": rank " + std::to_string(rank) + " holds " + std::to_string(n) +
           " tokens, x must be [" + std::to_string(n) + ", " + std::to_string(d) + "], got " + shape_str(x.shape));
    if (check) check();
    for (Local& l : mine)  // step 1
      l.own = layer.project_rows(TensorView(x.data + l.row0 * d, {l.block.end - l.block.begin, d}), l.block.begin);
  } catch (const std::exception& e) {
    refused = e.what();
  }
  agree(refused, comm, rank, who, seq);
  st.prepare_s += MPI_Wtime() - t0;
  exchange_halo(layer, all, mine, comm, rank, ranks, st);
  const double t1 = MPI_Wtime();
  for (Local& l : mine) {
    const TensorView rows(l.rows.data(), {l.block.end - l.first, layer.token_row_width()});
    l.state = layer.block_state(rows, l.first, l.block.begin, l.block.end, l.owned);
    if (keep_rows)
      l.own = {};  // training projects again (its tape keeps the rows); the forward starts from `own`
    else
      l.rows = {};
  }
  st.prepare_s += MPI_Wtime() - t1;
  const int64_t rate = layer.config().compress_rate(layer.type());
  for (RowStore BlockEntries::*store : {&BlockEntries::main, &BlockEntries::index}) {
    if (!rate || (mine.front().owned.*store).row_bytes() == 0) continue;
    const std::vector<uint8_t> entries = gather_entries(all, mine, store, rate, seq, comm, ranks, st);
    for (Local& l : mine) {  // the entries before the block
      RowStore& s = store == &BlockEntries::main ? l.state.compressor().entries : l.state.indexer().entries;
      std::memcpy(s.data(), entries.data(), static_cast<size_t>(l.block.begin / rate) * s.row_bytes());
    }
  }
  return mine;
}

Tensor context_parallel_forward(const Layer& layer, TensorView x, int64_t seq, MPI_Comm comm, const ContextOptions& o,
                                LayerState* state, ContextStats* stats) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  const int64_t d = layer.config().hidden_size;
  ContextStats st;
  std::vector<Local> mine = prepare_blocks(
      layer, x, seq, comm, o.layout, false,
      [&] {
        if (o.gather_state && (o.root < 0 || o.root >= ranks))
          fail("context_parallel_forward: root " + std::to_string(o.root) + " is not a rank of " +
               std::to_string(ranks));
        if (o.gather_state && rank == o.root && !state)
          fail("context_parallel_forward: gather_state needs a state on root");
      },
      "context_parallel_forward", st);
  const int64_t n = x.dim(0);
  const std::vector<TokenBlock> all = context_blocks(seq, ranks, o.layout);

  Tensor out({n, d});
  const double t2 = MPI_Wtime();
  int holder = 0;  // the rank of the last non-empty block: its state is the sequence's
  for (const TokenBlock& b : all)
    if (b.end > b.begin && b.end == seq) holder = b.owner;
  LayerState* last = nullptr;
  for (Local& l : mine) {
    const int64_t len = l.block.end - l.block.begin;
    if (len == 0) continue;
    const Tensor y = layer.forward_projected(l.own, l.state);
    l.own = {};
    std::copy(y.data.begin(), y.data.end(), out.data.begin() + l.row0 * d);
    if (l.block.end == seq) last = &l.state;
  }
  st.forward_s += MPI_Wtime() - t2;
  if (o.gather_state) {
    LayerState empty = layer.new_state();
    if (seq == 0) last = &empty;
    send_state(last, holder, layer, o, comm, rank, state, st);
  }
  if (stats) *stats = st;
  return out;
}

}  // namespace dsv4
