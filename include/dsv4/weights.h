// Weights of one attention layer, under the Hugging Face names of the spec
// (relative to `...self_attn.`). Linear weights are [out, in].
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dsv4/config.h"
#include "dsv4/safetensors.h"
#include "dsv4/tensor.h"

namespace dsv4 {

struct CompressorWeights {
  Tensor kv_proj;        // [2D or D, d]   (CSA overlapping: 2 series)
  Tensor gate_proj;      // same shape
  Tensor position_bias;  // [r, 2D or D]
  Tensor kv_norm;        // [D]
};

struct IndexerWeights {
  CompressorWeights compressor;  // width D_I, always overlapping
  Tensor q_b_proj;               // [H_I * D_I, r_q]
  Tensor weights_proj;           // [H_I, d]
};

struct LayerWeights {
  Tensor q_a_proj;  // [r_q, d]
  Tensor q_a_norm;  // [r_q]
  Tensor q_b_proj;  // [H*D, r_q]
  Tensor kv_proj;   // [D, d]
  Tensor kv_norm;   // [D]
  Tensor o_a_proj;  // [g*d_g, H*D/g]
  Tensor o_b_proj;  // [d, g*d_g]
  Tensor sinks;     // [H]
  std::optional<CompressorWeights> compressor;  // CSA, HCA
  std::optional<IndexerWeights> indexer;        // CSA
};

// Checks presence and shape of every tensor the layer type needs and that
// all weights are finite; errors name the tensor, its shape and the expected one.
void validate_weights(const LayerWeights& w, const Config& c, LayerType t);

// Loads the tensors named `prefix + <HF name>` from a safetensors file.
LayerWeights load_layer_weights(const SafeTensors& file, const Config& c, LayerType t,
                                const std::string& prefix = "");

// Builds a layer's weights from named tensors, as a PyTorch state_dict() gives
// them. A name is relative to the attention module (the spec's names, exactly
// the keys of the reference DeepseekV4Attention.state_dict(), e.g.
// "compressor.indexer.scorer.weights_proj.weight") or a full checkpoint name of
// either scheme ("model.layers.3.self_attn.q_a_proj.weight", "layers.3.attn.wq_a.weight").
// Throws one error listing every missing, unexpected or duplicated name and wrong shape.
LayerWeights layer_weights_from_named(std::vector<std::pair<std::string, Tensor>> named, const Config& c,
                                      LayerType t);

}  // namespace dsv4
