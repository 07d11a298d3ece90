// Internal to dsv4_mpi: the forward's first steps (context_parallel.cpp:
// token rows, halo, block states, entries), shared with training
// (context_train.cpp, context_backward.cpp).
#pragma once
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "dsv4/context_parallel.h"
#include "dsv4/error.h"

namespace dsv4 {

// An MPI datatype of `bytes` contiguous bytes (one row), freed with the object.
class RowType {
 public:
  explicit RowType(size_t bytes) {
    MPI_Type_contiguous(static_cast<int>(bytes), MPI_BYTE, &t_);
    MPI_Type_commit(&t_);
  }
  ~RowType() { MPI_Type_free(&t_); }
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
  operator MPI_Datatype() const { return t_; }

 private:
  MPI_Datatype t_;
};

inline int to_int(int64_t n, const char* what) {
  if (n < 0 || n > INT_MAX) fail(std::string("context parallel: ") + what + " exceeds MPI's int counts");
  return static_cast<int>(n);
}

// Token rows [begin, end) that block `to` needs from another block (its halo).
struct Piece {
  int src = 0, dst = 0;
  size_t to = 0, from = 0;  // the receiving and the sending block's index in the global list
  int64_t begin = 0, end = 0;
};

// Every halo piece, ordered by receiving block, then by sending block: both
// sides of the exchange walk this list in the same order.
inline std::vector<Piece> halo_pieces(const Layer& layer, const std::vector<TokenBlock>& all) {
  std::vector<Piece> out;
  for (size_t b = 0; b < all.size(); ++b) {  // empty blocks too: their state is built (and unused)
    const int64_t first = layer.context_first(all[b].begin);
    for (size_t c = 0; c < all.size(); ++c) {
      const int64_t lo = std::max(first, all[c].begin), hi = std::min(all[b].begin, all[c].end);
      if (lo < hi) out.push_back({all[c].owner, all[b].owner, b, c, lo, hi});
    }
  }
  return out;
}

// One block of this rank: its token rows (halo, then its own), state and entries.
struct Local {
  TokenBlock block;
  size_t global = 0;        // index in the global list
  int64_t row0 = 0;         // its first row in the rank's x
  int64_t first = 0;        // context_first(begin)
  Tensor own;               // its x-side rows [end - begin, projected_width()], token rows last
  std::vector<float> rows;  // token rows [end - first, width]: halo, then own
  LayerState state;
  BlockEntries owned;
};

// This rank's blocks (position order) with their states at `begin`, entries
// filled: the forward's steps 1-4, collective. x is checked on every rank
// (with `check`, run on each rank first) and any rank's refusal makes every
// rank throw before data moves; `who` names the call in the messages.
// keep_rows: Local::rows stay (training needs them) and Local::own is freed;
// else the other way round (the forward starts from own).
std::vector<Local> prepare_blocks(const Layer& layer, TensorView x, int64_t seq, MPI_Comm comm, ContextLayout layout,
                                  bool keep_rows, const std::function<void()>& check, const char* who,
                                  ContextStats& st);

// Every rank's verdict on its input: throws on every rank if any refused
// (`refused`: this rank's message, empty if fine).
// With seq (passed, or not, alike on every rank), the ranks must also agree on its value.
void agree(const std::string& refused, MPI_Comm comm, int rank, const char* who,
           std::optional<int64_t> seq = std::nullopt);

}  // namespace dsv4
