// What a forward can hand back besides its output: the intermediates of the
// spec (debugging, conformance) and where each query's attention goes.
#pragma once
#include "dsv4/tensor.h"

namespace dsv4 {

// What a forward can hand back for debugging and tests (per sequence).
// Shapes follow the conformance files with the batch axis dropped.
struct Intermediates {
  Tensor q;              // [H, S, D]      after per-head RMSNorm and RoPE
  Tensor kv;             // [S, D]         this chunk's key=value after norm and RoPE
  Tensor compressed_kv;  // [T, D]         all entries emitted so far (CSA/HCA)
  Tensor indexer_q;      // [S, H_I, D_I]  (CSA)
  Tensor indexer_kv;     // [T, D_I]       (CSA)
  Tensor index_scores;   // [S, T]         raw scores before masking (CSA)
  TensorI64 topk;        // [S, min(k,T)]  best first, -1 = empty slot (CSA)
};

// Where each query's softmax mass goes (Layer::attention_map), per sequence.
// Masses are per head over the keys of the spec: the sliding-window keys, the
// compressed entries (CSA: only the selected ones) and the sink.
struct AttentionMap {
  Tensor mass;         // [H, S, 3]  window, compressed, sink; each (h, t) sums to 1
  TensorI64 selected;  // CSA: [S, min(k, T)] the entries attended (the top-k), -1 = empty slot
  // Only if asked (dense = true): [H, S, P + T], the probability of each key by
  // absolute position (columns 0..P-1, P = positions seen) then of each
  // compressed entry (columns P..P+T-1); 0 where the query does not attend.
  Tensor dense;
};

}  // namespace dsv4
