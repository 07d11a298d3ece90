// Context parallelism on MPI (docs/distributed.md): one sequence's prefill
// through one attention layer, spread over the ranks of a communicator. Each
// rank holds blocks of the sequence's tokens and gets their outputs; what
// crosses ranks is a halo of hidden-state rows before each block (the window's
// W-1 and the compressor windows that straddle the block start), the
// compressed entries and indexer keys, and (optionally) the final state.
// Part of libdsv4_mpi (target dsv4::mpi), built when CMake finds MPI (DSV4_MPI).
#pragma once
#include <mpi.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "dsv4/conformance.h"
#include "dsv4/layer.h"

namespace dsv4 {

// contiguous: rank r holds block r of N near-equal blocks. zigzag: rank r holds
// blocks r and 2N-1-r of 2N (per-token cost grows with position, so each rank
// gets an early and a late block; rank 0 ends with the sequence's last block).
enum class ContextLayout { contiguous, zigzag };
ContextLayout context_layout(const std::string& name);  // "contiguous" or "zigzag"

struct TokenBlock {
  int64_t begin = 0, end = 0;  // positions [begin, end)
  int owner = 0;               // rank
};
// Every block of a `seq`-token sequence on `ranks` ranks, in position order (some may be empty).
std::vector<TokenBlock> context_blocks(int64_t seq, int ranks, ContextLayout layout);
// The blocks rank `rank` holds, in position order.
std::vector<TokenBlock> rank_blocks(int64_t seq, int ranks, int rank, ContextLayout layout);

struct ContextOptions {
  ContextLayout layout = ContextLayout::zigzag;
  // Root gets the state after all seq tokens (decode continues there).
  bool gather_state = false;
  int root = 0;
};

// What one rank spent and moved in one call.
struct ContextStats {
  double prepare_s = 0;   // projecting and compressing the halo and own rows
  double exchange_s = 0;  // MPI calls (halo, entries, state)
  double forward_s = 0;   // the blocks' forward
  double backward_s = 0;  // the blocks' backward (context_parallel_backward)
  int64_t bytes_sent = 0, bytes_received = 0;
};

// Collective over comm: every rank calls it with the same layer (same weights
// and options), seq and options. x: this rank's tokens [n, d], its blocks
// (rank_blocks) concatenated in position order. Returns their outputs [n, d],
// those of a single process feeding the blocks one after the other through a
// state (Layer::forward(x, state)), bit for bit (docs/distributed.md says
// why). With gather_state, *state on root becomes the state after all tokens:
// the same bytes (save_state) as that single process's. If any rank refuses
// its input (shape, non-finite values), every rank throws dsv4::Error (that
// rank naming the problem) before any data moves.
Tensor context_parallel_forward(const Layer& layer, TensorView x, int64_t seq, MPI_Comm comm,
                                const ContextOptions& options = {}, LayerState* state = nullptr,
                                ContextStats* stats = nullptr);

// Training (docs/distributed.md, "Backward"): what context_parallel_forward_train
// keeps on each rank for context_parallel_backward — its blocks' tapes (x, the
// halo's token rows, the entries, o, the CSA selection), O(block·(W + k))
// activations per block plus the entries, nothing S×S.
struct ContextTapeData;
class ContextTape;
// context_parallel_forward (same outputs, bit for bit) that also fills `tape`.
// Reference numerics only (deployment numerics round: no gradient); options'
// gather_state must be false.
Tensor context_parallel_forward_train(const Layer& layer, TensorView x, int64_t seq, MPI_Comm comm, ContextTape& tape,
                                      const ContextOptions& options = {}, ContextStats* stats = nullptr);
// Collective: every rank with its tape of the same call and dy [n, d] for its
// tokens (x's rows). Returns dx for this rank's tokens (x's shape) and, on
// every rank, the same weight gradients: the sum over all blocks, reduced in a
// fixed order (within a rank block after block, then a fixed binary tree over
// the ranks, then a broadcast), so identical for any thread count and across
// runs at a given rank count. Gradients equal the single-process
// Layer::backward's within float rounding (not bit for bit:
// docs/distributed.md says why). Bad input on any rank (dy's shape, a tape of
// another layer, rank count or call) throws dsv4::Error on every rank.
LayerGradients context_parallel_backward(const Layer& layer, const ContextTape& tape, TensorView dy, MPI_Comm comm,
                                         ContextStats* stats = nullptr);

class ContextTape {
 public:
  ContextTape();
  ~ContextTape();
  ContextTape(ContextTape&&) noexcept;
  ContextTape& operator=(ContextTape&&) noexcept;
  bool empty() const;
  size_t bytes() const;  // memory held
  ContextTapeData* data() const { return d_.get(); }

 private:
  friend Tensor context_parallel_forward_train(const Layer&, TensorView, int64_t, MPI_Comm, ContextTape&,
                                               const ContextOptions&, ContextStats*);
  std::unique_ptr<ContextTapeData> d_;
};

// `dsv4 verify --context-parallel`: each sequence of a conformance file (its
// chunks concatenated) split over the ranks of comm, every output row
// compared with the file's. Collective; every rank gets the whole report.
CaseReport verify_case_context_parallel(const std::filesystem::path& file, MPI_Comm comm, ContextLayout layout,
                                        Tolerance tol = {});

}  // namespace dsv4
