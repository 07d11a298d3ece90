// Wall-clock seconds per pipeline stage, accumulated over forward calls
// (pass a StageTimes* to Layer::forward to collect them).
#pragma once

namespace dsv4 {

struct StageTimes {
  double project = 0;       // fused projections, norms, RoPE
  double compress = 0;      // compressor pooling (main + indexer)
  double index_scores = 0;  // CSA indexer scoring
  double topk = 0;          // CSA top-k selection
  double attention = 0;     // sparse gather attention with the sink
  double output = 0;        // de-rotation, grouped projection, o_b
  double total() const { return project + compress + index_scores + topk + attention + output; }
};

}  // namespace dsv4
