// Training: the backward pass of one layer (Layer::forward_train / backward).
//
// What receives a gradient is what autograd of the reference gives one: the
// CSA top-k selection is discrete, so no gradient flows through the lightning
// indexer — its weights (compressor.indexer.*) get zero gradients. Everything
// else does: the q / kv / output projections and norms, the sinks, the
// compressors' projections, position biases and norms.
#pragma once
#include <cstddef>
#include <memory>

#include "dsv4/tensor.h"
#include "dsv4/weights.h"

namespace dsv4 {

class Layer;

// d loss / d (input, weights) of a one-shot forward.
struct LayerGradients {
  Tensor dx;  // x's shape ([B, S, d] or [S, d])
  // Every weight of the layer, fp32, same names and shapes as LayerWeights
  // (for native/bf16 layers: the gradient w.r.t. the dequantised values).
  // Summed over the batch. The indexer's tensors are present and zero.
  LayerWeights weights;
};

struct TapeData;   // the forward's saved activations (src/pipeline/tape.h)
struct BlockWork;  // what a block's backward passes between its steps (src/train/)

// One context-parallel block's backward in progress (Layer::block_backward_*,
// docs/distributed.md): the block [begin, end) of a sequence, its token rows
// from first = Layer::context_first(begin), m the compress rate. Its queries
// give gradients to keys other blocks own; the caller moves those between the
// steps (the MPI driver: context_parallel_backward).
struct BlockGradients {
  BlockGradients();
  ~BlockGradients();
  BlockGradients(BlockGradients&&) noexcept;
  BlockGradients& operator=(BlockGradients&&) noexcept;
  // [end/m, D]: gradients of the entries 0 .. end/m - 1 from this block's
  // queries (attend step). Before the compress step the caller adds into the
  // block's own rows [begin/m, end/m) the later blocks' shares of them.
  Tensor entries;
  // [end - first, Layer::token_row_width()]: gradients of the token rows
  // [first, end): the kv column (attend step), the compressors' C and Z
  // (compress step: the windows this block pools); the columns from `columns`
  // on (the indexer's) stay zero. Before the project step the caller adds
  // into the block's own rows [begin - first, end - first) the other blocks'
  // shares of them (rows of their halos).
  Tensor rows;
  int64_t columns = 0;
  Tensor dx;  // [end - begin, d] (project step)
  std::unique_ptr<BlockWork> work;
};

// What Layer::forward_train keeps for Layer::backward: the input, the CSA
// selection, the attention output and what cannot be recomputed cheaply
// (docs/training.md lists it). O(S·(H·D + W + k)) floats per sequence; nothing S×S.
class Tape {
 public:
  Tape();
  ~Tape();
  Tape(Tape&&) noexcept;
  Tape& operator=(Tape&&) noexcept;
  bool empty() const;
  size_t bytes() const;  // memory held
  TapeData* data() const { return d_.get(); }

 private:
  friend class Layer;
  std::unique_ptr<TapeData> d_;
};

}  // namespace dsv4
