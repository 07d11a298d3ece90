// Weights of one attention layer, under the Hugging Face names of the spec
// (relative to `...self_attn.`). Linear weights are [out, in].
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
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
std::string_view weight_format_name(WeightFormat f);   // "f32", "bf16", "native"
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
  Tensor q_a_proj;                              // [r_q, d]
  Tensor q_a_norm;                              // [r_q]
  Tensor q_b_proj;                              // [H*D, r_q]
  Tensor kv_proj;                               // [D, d]
  Tensor kv_norm;                               // [D]
  Tensor o_a_proj;                              // [g*d_g, H*D/g]
  Tensor o_b_proj;                              // [d, g*d_g]
  Tensor sinks;                                 // [H]
  std::optional<CompressorWeights> compressor;  // CSA, HCA
  std::optional<IndexerWeights> indexer;        // CSA
  // Projection matrices kept in their stored dtype, by spec name
  // ("q_a_proj.weight", ...); their Tensor above is then empty.
  std::map<std::string, StoredMatrix> stored;
};

// ---- The weight table ----------------------------------------------------
// Every tensor an attention layer can have, once: what loading, validation,
// packing, random weights, quantisation, byte counts, gradients and the
// tools derive from (gemma.cpp's ForEachTensor is the model).

enum class WeightId : uint8_t {
  q_a_proj,
  q_a_norm,
  q_b_proj,
  kv_proj,
  kv_norm,
  o_a_proj,
  o_b_proj,
  sinks,
  compressor_kv_proj,
  compressor_gate_proj,
  compressor_position_bias,
  compressor_kv_norm,
  indexer_kv_proj,
  indexer_gate_proj,
  indexer_position_bias,
  indexer_kv_norm,
  indexer_q_b_proj,
  indexer_weights_proj,
};
constexpr size_t kNumWeights = 18;

// Which part of the layer holds a tensor, and so which layer types have it.
enum class WeightPart : uint8_t {
  attention,   // every layer type (LayerWeights' own members)
  compressor,  // CSA and HCA (LayerWeights::compressor)
  indexer,     // CSA (LayerWeights::indexer): its selection is discrete, so it gets no gradient
};
bool layer_has(LayerType t, WeightPart p);

// What a tensor does.
enum class WeightRole : uint8_t {
  x_projection,       // a linear layer [out, d] that reads the hidden state x (packed into one fused GEMM)
  cq_projection,      // a linear layer [out, r_q] that reads the query latent c_q (the second fused GEMM)
  output_projection,  // o_a [g·d_g, H·D/g] (reads the attention output), o_b [d, g·d_g] (reads o_a's)
  norm,               // an RMSNorm weight [n]
  position_bias,      // a compressor's bias per window slot [rate, in_width]
  sink,               // the per-head sink logits [H]
};
// The linear layers' matrices: what WeightFormat::native keeps as stored.
constexpr bool is_projection(WeightRole r) {
  return r == WeightRole::x_projection || r == WeightRole::cq_projection || r == WeightRole::output_projection;
}

struct WeightEntry {
  WeightId id;
  std::string_view name;      // the spec's (Hugging Face) name, relative to `self_attn.`
  std::string_view deepseek;  // DeepSeek's original name, relative to `attn.`
  WeightPart part;
  WeightRole role;
  DType released;  // as the released DeepSeek-V4 checkpoint stores it (FP8 E4M3 with 128x128 block scales)
};

// In this order everywhere (a sliding layer has the first 8, HCA the first 12, CSA all).
inline constexpr WeightEntry kWeightTable[kNumWeights] = {
    {WeightId::q_a_proj, "q_a_proj.weight", "wq_a.weight", WeightPart::attention, WeightRole::x_projection,
     DType::F8_E4M3},
    {WeightId::q_a_norm, "q_a_norm.weight", "q_norm.weight", WeightPart::attention, WeightRole::norm, DType::BF16},
    {WeightId::q_b_proj, "q_b_proj.weight", "wq_b.weight", WeightPart::attention, WeightRole::cq_projection,
     DType::F8_E4M3},
    {WeightId::kv_proj, "kv_proj.weight", "wkv.weight", WeightPart::attention, WeightRole::x_projection,
     DType::F8_E4M3},
    {WeightId::kv_norm, "kv_norm.weight", "kv_norm.weight", WeightPart::attention, WeightRole::norm, DType::BF16},
    {WeightId::o_a_proj, "o_a_proj.weight", "wo_a.weight", WeightPart::attention, WeightRole::output_projection,
     DType::F8_E4M3},
    {WeightId::o_b_proj, "o_b_proj.weight", "wo_b.weight", WeightPart::attention, WeightRole::output_projection,
     DType::F8_E4M3},
    {WeightId::sinks, "sinks", "attn_sink", WeightPart::attention, WeightRole::sink, DType::F32},
    {WeightId::compressor_kv_proj, "compressor.kv_proj.weight", "compressor.wkv.weight", WeightPart::compressor,
     WeightRole::x_projection, DType::BF16},
    {WeightId::compressor_gate_proj, "compressor.gate_proj.weight", "compressor.wgate.weight", WeightPart::compressor,
     WeightRole::x_projection, DType::BF16},
    {WeightId::compressor_position_bias, "compressor.position_bias", "compressor.ape", WeightPart::compressor,
     WeightRole::position_bias, DType::F32},
    {WeightId::compressor_kv_norm, "compressor.kv_norm.weight", "compressor.norm.weight", WeightPart::compressor,
     WeightRole::norm, DType::BF16},
    {WeightId::indexer_kv_proj, "compressor.indexer.kv_proj.weight", "indexer.compressor.wkv.weight",
     WeightPart::indexer, WeightRole::x_projection, DType::BF16},
    {WeightId::indexer_gate_proj, "compressor.indexer.gate_proj.weight", "indexer.compressor.wgate.weight",
     WeightPart::indexer, WeightRole::x_projection, DType::BF16},
    {WeightId::indexer_position_bias, "compressor.indexer.position_bias", "indexer.compressor.ape", WeightPart::indexer,
     WeightRole::position_bias, DType::F32},
    {WeightId::indexer_kv_norm, "compressor.indexer.kv_norm.weight", "indexer.compressor.norm.weight",
     WeightPart::indexer, WeightRole::norm, DType::BF16},
    {WeightId::indexer_q_b_proj, "compressor.indexer.q_b_proj.weight", "indexer.wq_b.weight", WeightPart::indexer,
     WeightRole::cq_projection, DType::F8_E4M3},
    {WeightId::indexer_weights_proj, "compressor.indexer.scorer.weights_proj.weight", "indexer.weights_proj.weight",
     WeightPart::indexer, WeightRole::x_projection, DType::BF16},
};
inline const WeightEntry& weight_entry(WeightId id) { return kWeightTable[static_cast<size_t>(id)]; }
// The entry of a spec name, or null. Also takes "compressor.indexer.weights_proj.weight",
// the spelling some transformers versions use (without "scorer.").
const WeightEntry* find_weight(std::string_view spec_name);

// One tensor of a layer with a given config and type.
struct WeightSpec {
  WeightId id;
  std::string name;      // spec name, e.g. "compressor.kv_proj.weight"
  std::string deepseek;  // e.g. "compressor.wkv.weight"
  Shape shape;           // for the config and layer type
  WeightPart part;
  WeightRole role;
  DType released;
};
Shape weight_shape(const Config& c, LayerType t, WeightId id);
// Every tensor a layer of type t has, in table order.
std::vector<WeightSpec> weight_specs(const Config& c, LayerType t);
// The spec names of a layer type's projection matrices (is_projection).
std::vector<std::string> projection_names(LayerType t);

// w's tensor of id; the non-const one creates w.compressor / w.indexer if
// needed, the const one throws naming the missing part.
Tensor& weight(LayerWeights& w, WeightId id);
const Tensor& weight(const LayerWeights& w, WeightId id);
// The parts a layer of type t has (compressor, indexer), every tensor empty.
LayerWeights empty_weights(LayerType t);
// Every tensor a layer of type t has, zero-filled at its shape (gradients start here).
LayerWeights zero_weights(const Config& c, LayerType t);

// f(spec) for every tensor of a (c, t) layer, in table order.
template <class F>
void for_each_weight(const Config& c, LayerType t, F&& f) {
  for (const WeightSpec& s : weight_specs(c, t)) f(s);
}
// f(spec, tensor) with w's tensor of each (Tensor& or const Tensor&, as weight()).
template <class W, class F>
requires std::is_same_v<std::remove_const_t<W>, LayerWeights>
void for_each_weight(W& w, const Config& c, LayerType t, F&& f) {
  for (const WeightSpec& s : weight_specs(c, t)) f(s, weight(w, s.id));
}

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

// Checks presence and shape of every tensor the layer type needs and that
// all weights are finite; errors name the tensor, its shape and the expected one.
void validate_weights(const LayerWeights& w, const Config& c, LayerType t);

// Loads the tensors named `prefix + <HF name>` from a safetensors file.
LayerWeights load_layer_weights(const SafeTensors& file, const Config& c, LayerType t, const std::string& prefix = "");

// Builds a layer's weights from named tensors, as a PyTorch state_dict() gives
// them. A name is relative to the attention module (the spec's names, exactly
// the keys of the reference DeepseekV4Attention.state_dict(), e.g.
// "compressor.indexer.scorer.weights_proj.weight") or a full checkpoint name of
// either scheme ("model.layers.3.self_attn.q_a_proj.weight", "layers.3.attn.wq_a.weight").
// Throws one error listing every missing, unexpected or duplicated name and wrong shape.
LayerWeights layer_weights_from_named(std::vector<std::pair<std::string, Tensor>> named, const Config& c, LayerType t);

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
