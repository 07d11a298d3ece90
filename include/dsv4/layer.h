// One DeepSeek-V4 attention layer: config + type + weights, and its forward.
//
//   project -> compress -> index (CSA) -> gather-attend (+sink) -> de-rotate -> project
//
// A one-shot forward is a chunk through an empty state (see state.h).
#pragma once
#include <memory>
#include <span>
#include <vector>

#include "dsv4/config.h"
#include "dsv4/profile.h"
#include "dsv4/state.h"
#include "dsv4/tensor.h"
#include "dsv4/weights.h"

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

struct PackedLayer;  // weights rearranged once for the fast path

// How the projection matrices are held in memory. bf16 halves them; they are
// widened to fp32 inside the GEMMs (activations and accumulation stay fp32).
enum class WeightFormat { f32, bf16 };
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

  // One-shot forward over x [B, S, d] at positions 0..S-1 -> [B, S, d].
  // If `debug` is given it is resized to B and filled.
  // Long inputs run in chunks of at most kPrefillChunk tokens through a state,
  // which bounds activation memory (debug output disables the split).
  Tensor forward(const Tensor& x, std::vector<Intermediates>* debug = nullptr, StageTimes* times = nullptr) const;

  // A new empty decode state for one sequence (in the layer's numerics).
  LayerState new_state() const;

  // Feed one chunk x [S, d] (or [1, S, d]) of one sequence through its state;
  // positions continue from state.position(). Returns [S, d].
  Tensor forward(const Tensor& x, LayerState& state, Intermediates* debug = nullptr,
                 StageTimes* times = nullptr) const;

  // A serving engine's step: several sequences, each with its own state and
  // chunk length (ragged), computed in one call. xs[i] is [S_i, d].
  std::vector<Tensor> forward_batch(std::span<const Tensor* const> xs, std::span<LayerState* const> states,
                                    std::vector<Intermediates>* debug = nullptr, StageTimes* times = nullptr) const;

  static constexpr int64_t kPrefillChunk = 1024;

 private:
  Config config_;
  LayerType type_;
  LayerWeights weights_;
  std::unique_ptr<PackedLayer> packed_;
};

}  // namespace dsv4
