// Weights of one attention layer, under the Hugging Face names of the spec
// (relative to `...self_attn.`). Linear weights are [out, in].
#pragma once
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dsv4/config.h"
#include "dsv4/safetensors.h"
#include "dsv4/tensor.h"

namespace dsv4 {

// How the projection matrices are held in memory; they are widened to fp32
// inside the GEMMs (activations and accumulation stay fp32).
//   f32:    fp32 (stored weights are dequantised at load)
//   bf16:   rounded to bf16, half the memory
//   native: as the checkpoint stores them (LayerWeights::stored: FP8 E4M3 with
//           its block scales, BF16, F16, F32), nothing widened at load; the
//           same numbers as f32 on the dequantised weights (docs/weights.md)
enum class WeightFormat { f32, bf16, native };
std::string_view weight_format_name(WeightFormat f);  // "f32", "bf16", "native"
WeightFormat parse_weight_format(std::string_view s);  // throws naming the value

// A projection matrix as the checkpoint stores it (LayerOptions{WeightFormat::native}):
// F32, BF16, F16 or F8_E4M3 elements, row-major [out, in]; FP8 with one fp32
// factor per 128x128 block (UE8M0 or fp32 scales, decoded; edge blocks partial).
struct StoredMatrix {
  DType dtype = DType::F32;
  Shape shape;
  std::vector<std::byte> data;
  Tensor scale;  // F8_E4M3: [ceil(out/128), ceil(in/128)]; empty otherwise
  size_t bytes() const { return data.size() + scale.data.size() * sizeof(float); }
  Tensor dequantised() const;  // the fp32 values (element × its block's factor)
};

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
  // Projection matrices kept in their stored dtype, by spec name
  // ("q_a_proj.weight", ...); their Tensor above is then empty.
  std::map<std::string, StoredMatrix> stored;
};

// Quantisers for stored matrices (benchmarks, synthetic checkpoints):
// FP8 E4M3 with one scale per 128x128 block, the block's max |w| mapped to 448
// (ue8m0: the scale rounded up to a power of two, as V4's UE8M0 `.scale`
// tensors; else fp32 max/448 as `weight_scale_inv`); BF16 rounded to nearest even.
StoredMatrix quantize_fp8_blocks(const Tensor& w, bool ue8m0);
StoredMatrix quantize_bf16(const Tensor& w);
// A stored matrix as checkpoint tensors: the weight under `name` and, for FP8,
// its block scales under `scale_name` as F32 (weight_scale_inv) or F8_E8M0
// (UE8M0 bytes; the scales must then be powers of two).
std::vector<NamedTensor> checkpoint_tensors(const std::string& name, const std::string& scale_name,
                                           const StoredMatrix& m, DType scale_dtype);
// The released DeepSeek-V4 dtypes: FP8 E4M3 + UE8M0 for q_a, q_b, kv, o_a, o_b and the
// indexer's q_b; BF16 for the compressors' and the indexer's kv/gate and weights_proj.
// Moves every projection matrix of w into w.stored (its Tensor left empty).
void store_as_released(LayerWeights& w, LayerType t);

// The spec names of a layer type's projection matrices (the 2-D ".weight"
// tensors: what WeightFormat::native keeps as stored).
std::vector<std::string> projection_names(LayerType t);

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

// A tensor as a checkpoint stores it: dtype, shape and little-endian bytes.
struct RawTensor {
  DType dtype = DType::F32;
  Shape shape;
  std::vector<std::byte> data;
};
// layer_weights_from_named for tensors in their stored dtypes (F32, BF16, F16,
// F8_E4M3, or U8 holding E4M3 codes), names as there. An FP8 weight comes with
// its block scales under its name with ".weight" replaced by ".scale" or
// ".weight_scale_inv" (F32, BF16, F16, F8_E8M0 or U8 holding UE8M0 bytes).
// keep_stored (WeightFormat::native): the projection matrices go to
// LayerWeights::stored unwidened; every other tensor, and all of them
// otherwise, is decoded to fp32 (FP8 times its scales). Errors list every
// problem, as layer_weights_from_named's do.
LayerWeights layer_weights_from_stored(std::vector<std::pair<std::string, RawTensor>> named, const Config& c,
                                       LayerType t, bool keep_stored);

}  // namespace dsv4
