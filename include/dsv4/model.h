// A DeepSeek-V4 checkpoint folder (dsv4/checkpoint.h: config, tensors,
// problems, weights per layer) that hands out ready Layers.
#pragma once
#include <cstdint>
#include <filesystem>

#include "dsv4/checkpoint.h"
#include "dsv4/layer.h"

namespace dsv4 {

class Model : public Checkpoint {
 public:
  // Reads config.json and every shard header; checks the index against the
  // shards. Errors name the folder, file and tensor.
  static Model open(const std::filesystem::path& dir);

  // Layer i. The default format is f32: the layer then computes exactly what the
  // reference computes on the dequantised weights, in every kernel; native holds
  // the matrices as stored (FP8: a quarter of the bytes) with the same numbers on
  // the decode path and within 1e-6 in prefill (docs/weights.md).
  Layer layer(int64_t i, LayerOptions options = {}) const;
};

// Runs x [B, S, d] through the layer at positions 0..S-1: in one shot
// (chunk <= 0), or each batch row through its own decode state in chunks of
// `chunk` tokens. Returns [B, S, d].
Tensor run_layer(const Layer& layer, const Tensor& x, int64_t chunk = 0);

}  // namespace dsv4
