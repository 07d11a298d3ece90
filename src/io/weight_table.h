// The tensors of one attention layer by their Hugging Face names (relative to
// `self_attn.`), and FP8 block scales. Implemented in weights.cpp.
#pragma once
#include <string>
#include <vector>

#include "dsv4/weights.h"

namespace dsv4 {

struct WeightSpec {
  std::string name;  // e.g. "compressor.kv_proj.weight"
  Shape shape;       // expected for the config and layer type
};

// Every tensor a layer of type t needs (a CSA layer's list holds every name).
std::vector<WeightSpec> expected_weights(const Config& c, LayerType t);

// The member of w that holds `name`; nullptr if w has no such member (create
// w.compressor / w.indexer first for CSA/HCA layers).
Tensor* weight_slot(LayerWeights& w, const std::string& name);

// Every tensor a layer of type t has, zero-filled at its shape (gradients start here).
LayerWeights zero_weights(const Config& c, LayerType t);

// The spec name for `name`, which may be an alternative spelling: some
// transformers versions drop "scorer." from the indexer's head weights.
std::string canonical_name(const std::string& name);

// FP8 weights carry one scale per 128x128 block; edge blocks are partial.
constexpr int64_t kScaleBlock = 128;
Shape scale_grid(const Shape& weight);  // [ceil(rows/128), ceil(cols/128)] of a 2-D weight
// w[i][j] *= s[i/128][j/128]; s must have shape scale_grid(w.shape).
void apply_block_scales(Tensor& w, const Tensor& s);

}  // namespace dsv4
