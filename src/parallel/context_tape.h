// Internal to dsv4_mpi: what context_parallel_forward_train keeps on a rank
// (context_train.cpp) for context_parallel_backward (context_backward.cpp).
#pragma once
#include <cstdint>
#include <vector>

#include "dsv4/context_parallel.h"

namespace dsv4 {

struct ContextTapeData {
  const Layer* layer = nullptr;
  uint64_t call = 0;            // rank 0's count of forward_train calls, the same on every rank of the call
  int64_t seq = 0, tokens = 0;  // the sequence; this rank's tokens (x's rows)
  int ranks = 0, rank = 0;
  ContextLayout layout = ContextLayout::zigzag;
  struct Block {
    TokenBlock block;
    size_t global = 0;  // index in context_blocks()
    int64_t row0 = 0;   // first row in the rank's x
    Tape tape;          // Layer::forward_train through the block's state (empty block: none)
  };
  std::vector<Block> blocks;  // position order
};

// The weights' gradients summed over the ranks of comm in a fixed order (a
// binary tree to rank 0, then a broadcast): every rank ends with the same bits.
void reduce_weights(LayerWeights& w, const Layer& layer, MPI_Comm comm, ContextStats& st);

}  // namespace dsv4
