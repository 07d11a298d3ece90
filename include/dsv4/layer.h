// One DeepSeek-V4 attention layer: config + type + weights, and its forward.
//
//   project -> compress -> index (CSA) -> gather-attend (+sink) -> de-rotate -> project
//
// A one-shot forward is a chunk through an empty state (see state.h).
#pragma once
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "dsv4/config.h"
#include "dsv4/intermediates.h"
#include "dsv4/profile.h"
#include "dsv4/state.h"
#include "dsv4/tensor.h"
#include "dsv4/train.h"
#include "dsv4/weights.h"

namespace dsv4 {

struct PackedLayer;  // weights rearranged once for the fast path

// The compressed entries one block of a sequence computes (context parallelism):
// ids [first, first + count), as the state stores them.
struct BlockEntries {
  int64_t first = 0, count = 0;
  RowStore main;   // CSA/HCA entries
  RowStore index;  // CSA indexer keys
};

struct LayerOptions {
  WeightFormat weights = WeightFormat::f32;
  // reference: the fp32 math (default). deployment: the served model's FP8/FP4
  // roundings and a quantised decode state (docs/numerics.md). A deployment
  // CSA layer needs index_head_dim to be a power of two.
  Numerics numerics = Numerics::reference;
};

class Layer {
 public:
  // Validates, then packs the projection matrices (moved out of `weights`).
  Layer(Config config, LayerType type, LayerWeights weights, LayerOptions options = {});
  ~Layer();
  Layer(Layer&&) noexcept;
  Layer& operator=(Layer&&) noexcept;

  const Config& config() const { return config_; }
  LayerType type() const { return type_; }
  Numerics numerics() const;
  // Norms, position biases and sinks; the projection matrices live packed
  // inside the layer (their Tensors here are empty).
  const LayerWeights& weights() const { return weights_; }
  // Bytes of weights the layer holds (packed matrices + the small tensors).
  size_t weight_bytes() const;

  // One-shot forward over x [B, S, d] (or [S, d]) at positions 0..S-1 -> x's shape.
  // If `debug` is given it is resized to B and filled.
  // Long inputs run in chunks of at most kPrefillChunk tokens through a state,
  // which bounds activation memory (debug output disables the split).
  Tensor forward(TensorView x, std::vector<Intermediates>* debug = nullptr, StageTimes* times = nullptr) const;

  // One-shot forward of x [B, S, d] or [S, d] that also reports where each query attends
  // (one map per sequence). Costs O(H·(W + k)) per query on top of the forward;
  // the [H, S, S + T] dense map is built only when `dense` is true.
  std::vector<AttentionMap> attention_map(TensorView x, bool dense = false) const;
  // The same for one chunk x [S, d] of a sequence through its decode state (the
  // state advances as forward(x, state) would): maps of a long sequence block by
  // block of queries in bounded memory. Dense columns: positions 0..P-1, P =
  // state.position() after the chunk, then the T entries emitted so far.
  AttentionMap attention_map(TensorView x, LayerState& state, bool dense = false) const;

  // A new empty decode state for one sequence (in the layer's numerics).
  LayerState new_state() const;

  // Feed one chunk x [S, d] (or [1, S, d]) of one sequence through its state;
  // positions continue from state.position(). Returns [S, d].
  Tensor forward(TensorView x, LayerState& state, Intermediates* debug = nullptr, StageTimes* times = nullptr) const;

  // A serving engine's step: several sequences, each with its own state and
  // chunk length (ragged), computed in one call. xs[i] is [S_i, d].
  std::vector<Tensor> forward_batch(std::span<const Tensor* const> xs, std::span<LayerState* const> states,
                                    std::vector<Intermediates>* debug = nullptr, StageTimes* times = nullptr) const;
  // The same over views of the callers' buffers (no copy of the inputs).
  std::vector<Tensor> forward_batch(std::span<const TensorView> xs, std::span<LayerState* const> states,
                                    std::vector<Intermediates>* debug = nullptr, StageTimes* times = nullptr) const;

  // Training (docs/training.md). forward_train is forward(x) — the same
  // output bit for bit — that also fills `tape` for backward (reusing the
  // tape's memory if it held an earlier forward). Reference numerics only
  // (deployment numerics round, which has no gradient).
  Tensor forward_train(TensorView x, Tape& tape) const;
  // Gradients of sum(y · dy) for y = forward(x): dy has the shape forward gave.
  // Deterministic: bit-identical for any thread count.
  LayerGradients backward(const Tape& tape, TensorView dy) const;
  // The same, accumulating: adds the weights' gradients into grads.weights (as
  // torch accumulates .grad: micro-batches, reused buffers) and sets grads.dx.
  void backward(const Tape& tape, TensorView dy, LayerGradients& grads) const;
  // Zero gradients of every weight of the layer (dx empty): what to accumulate into.
  LayerGradients zero_gradients() const;
  // Both in one call (the tape is dropped after).
  LayerGradients backward(TensorView x, TensorView dy) const;

  // Context parallelism (docs/distributed.md; the MPI driver is dsv4/context_parallel.h).
  // A block [begin, end) of a sequence is a chunk continuing the state at `begin`.
  // That state is built from the token rows (each token's kv, compressor and
  // indexer C/Z: token_row_width() floats) of [context_first(begin), begin) — the
  // window's rows and the compressor windows straddling `begin` — and the entries
  // before the block. token_rows projects x [n, d] at positions [begin, begin+n)
  // in the pieces forward(x, state) uses, so the rows have the bits forward
  // computes. block_state takes the token rows [end - first, width] of [first,
  // end), first = context_first(begin), and returns the state a single process
  // holds at `begin` (the same bytes), except that its entries before the block's
  // own are zero rows for the caller to fill from the other blocks; `owned` gets
  // the block's own: ids [begin/m, end/m). Neither runs any attention.
  int64_t context_first(int64_t begin) const;
  int64_t token_row_width() const;
  Tensor token_rows(TensorView x, int64_t begin) const;
  LayerState block_state(TensorView rows, int64_t first, int64_t begin, int64_t end, BlockEntries& owned) const;
  // The whole x-side projection of the block (its rows end with the token rows:
  // [n, projected_width()], the last token_row_width() columns), and the block's
  // forward from it: forward(x, state) bit for bit, without projecting x again.
  int64_t projected_width() const;
  Tensor project_rows(TensorView x, int64_t begin) const;
  Tensor forward_projected(TensorView projected, LayerState& state) const;
  // Training a block: forward(x, state) that also fills `tape` (reference
  // numerics only), state = block_state(rows, ...) with its entries filled,
  // rows those token rows [first, end). The tape serves only the block's
  // backward, in three steps with the caller moving partial sums between the
  // blocks in between (BlockGradients says what); each step adds its share of
  // the weights' gradients into `weights` (shapes as zero_gradients()).
  Tensor forward_train(TensorView x, LayerState& state, TensorView rows, Tape& tape) const;
  void block_backward_attend(const Tape& tape, TensorView dy, BlockGradients& g, LayerWeights& weights) const;
  void block_backward_compress(const Tape& tape, BlockGradients& g, LayerWeights& weights) const;
  void block_backward_project(const Tape& tape, BlockGradients& g, LayerWeights& weights) const;

  // Packed documents (docs/packing.md): x [T, d] (or [1, T, d]) holds documents
  // back to back; cu_seqlens = {0, c_1, ..., T} their boundaries (document i is
  // rows [c_i, c_{i+1}); equal neighbours are an empty document, allowed).
  // Each document is computed as if alone, positions from 0: the output equals
  // forward(document) bit for bit, row for row, in one call over all of them.
  // debug / maps: one per document.
  Tensor forward(TensorView x, std::span<const int64_t> cu_seqlens, std::vector<Intermediates>* debug = nullptr,
                 StageTimes* times = nullptr) const;
  std::vector<AttentionMap> attention_map(TensorView x, std::span<const int64_t> cu_seqlens, bool dense = false) const;
  // Training on packed documents: backward(tape, dy) with dy [T, d] then gives
  // dx row for row as each document's own backward, and the weights' gradients
  // accumulated over the documents in order (as backward(tape_i, dy_i, grads)
  // for i = 0, 1, ... would).
  Tensor forward_train(TensorView x, std::span<const int64_t> cu_seqlens, Tape& tape) const;
  LayerGradients backward(TensorView x, std::span<const int64_t> cu_seqlens, TensorView dy) const;

  static constexpr int64_t kPrefillChunk = 1024;

 private:
  Config config_;
  LayerType type_;
  LayerWeights weights_;
  std::unique_ptr<PackedLayer> packed_;
};

// cu_seqlens of per-token segment ids (MaxText's input): each run of equal ids
// is one document. The ids must be non-decreasing (a document's tokens
// contiguous, an id never reused); otherwise a dsv4::Error names the token.
std::vector<int64_t> cu_seqlens_from_segment_ids(std::span<const int64_t> segment_ids);
// Checks boundaries for a packed buffer of `tokens` rows: starts at 0, ends at
// tokens, never decreases. Throws a dsv4::Error naming the offending entry.
void check_cu_seqlens(std::span<const int64_t> cu_seqlens, int64_t tokens);

}  // namespace dsv4
