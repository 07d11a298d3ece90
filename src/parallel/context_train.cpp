// Context-parallel training, the forward (docs/distributed.md, "Backward"):
// context_parallel_forward's steps 1-4, then each block through
// Layer::forward_train(x, state, rows, tape), which keeps the block's token
// rows (its halo's included) for the backward. Also the fixed-order reduction
// of the weights' gradients over the ranks.
#include <atomic>

#include "parallel/context_blocks.h"
#include "parallel/context_tape.h"

namespace dsv4 {

ContextTape::ContextTape() = default;
ContextTape::~ContextTape() = default;
ContextTape::ContextTape(ContextTape&&) noexcept = default;
ContextTape& ContextTape::operator=(ContextTape&&) noexcept = default;
bool ContextTape::empty() const { return !d_; }
size_t ContextTape::bytes() const {
  size_t n = 0;
  if (d_)
    for (const ContextTapeData::Block& b : d_->blocks) n += b.tape.bytes();
  return n;
}

Tensor context_parallel_forward_train(const Layer& layer, TensorView x, int64_t seq, MPI_Comm comm, ContextTape& tape,
                                      const ContextOptions& o, ContextStats* stats) {
  static std::atomic<uint64_t> calls{0};
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  const char* who = "context_parallel_forward_train";
  const int64_t d = layer.config().hidden_size, width = layer.token_row_width();
  ContextStats st;
  std::vector<Local> mine = prepare_blocks(
      layer, x, seq, comm, o.layout, /*keep_rows=*/true,
      [&] {
        if (layer.numerics() != Numerics::reference)
          fail(std::string(who) +
               ": deployment numerics round to FP8/FP4, which has no gradient; build the layer with reference "
               "numerics for training");
        if (o.gather_state) fail(std::string(who) + ": gather_state is for context_parallel_forward");
      },
      who, st);
  auto data = std::make_unique<ContextTapeData>();
  data->layer = &layer, data->seq = seq, data->tokens = x.dim(0);
  data->ranks = ranks, data->rank = rank, data->layout = o.layout;
  uint64_t call = rank == 0 ? ++calls : 0;
  MPI_Bcast(&call, 1, MPI_UINT64_T, 0, comm);
  data->call = call;

  Tensor out({x.dim(0), d});
  const double t0 = MPI_Wtime();
  for (Local& l : mine) {
    data->blocks.push_back({l.block, l.global, l.row0, Tape()});
    const int64_t len = l.block.end - l.block.begin;
    if (len > 0) {
      const TensorView rows(l.rows.data(), {l.block.end - l.first, width});
      const Tensor y =
          layer.forward_train(TensorView(x.data + l.row0 * d, {len, d}), l.state, rows, data->blocks.back().tape);
      std::copy(y.data.begin(), y.data.end(), out.data.begin() + l.row0 * d);
    }
    l.rows = {}, l.state = LayerState();
  }
  st.forward_s += MPI_Wtime() - t0;
  tape.d_ = std::move(data);
  if (stats) *stats = st;
  return out;
}

namespace {

// One tensor's sum over the ranks: rank r adds rank r + step's at step = 1, 2,
// 4, ... (the same association on every run), then rank 0 broadcasts it.
void reduce_tensor(std::vector<float>& v, std::vector<float>& other, MPI_Comm comm, int rank, int ranks,
                   ContextStats& st) {
  constexpr size_t kPiece = size_t{1} << 28;  // floats per MPI call (int counts)
  auto each_piece = [&](auto&& f) {
    for (size_t at = 0; at < v.size(); at += kPiece) f(at, static_cast<int>(std::min(kPiece, v.size() - at)));
  };
  const auto bytes = static_cast<int64_t>(v.size() * sizeof(float));
  for (int step = 1; step < ranks; step *= 2) {
    if (rank % (2 * step) == step) {
      each_piece([&](size_t at, int n) { MPI_Send(v.data() + at, n, MPI_FLOAT, rank - step, 1, comm); });
      st.bytes_sent += bytes;
      break;
    }
    if (rank % (2 * step) == 0 && rank + step < ranks) {
      other.resize(v.size());
      each_piece([&](size_t at, int n) {
        MPI_Recv(other.data() + at, n, MPI_FLOAT, rank + step, 1, comm, MPI_STATUS_IGNORE);
      });
      for (size_t i = 0; i < v.size(); ++i) v[i] += other[i];
      st.bytes_received += bytes;
    }
  }
  each_piece([&](size_t at, int n) { MPI_Bcast(v.data() + at, n, MPI_FLOAT, 0, comm); });
  // (counted as if root sent every rank its copy)
  if (rank == 0) st.bytes_sent += bytes * (ranks - 1);
  if (rank != 0) st.bytes_received += bytes;
}

}  // namespace

void reduce_weights(LayerWeights& w, const Layer& layer, MPI_Comm comm, ContextStats& st) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  std::vector<float> other;
  const double t0 = MPI_Wtime();
  for_each_weight(w, layer.config(), layer.type(),
                  [&](const WeightSpec&, Tensor& t) { reduce_tensor(t.data, other, comm, rank, ranks, st); });
  st.exchange_s += MPI_Wtime() - t0;
}

}  // namespace dsv4
