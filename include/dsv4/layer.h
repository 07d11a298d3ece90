// One DeepSeek-V4 attention layer: config + type + weights, and its forward.
//
//   project -> compress -> index (CSA) -> gather-attend (+sink) -> de-rotate -> project
//
// A one-shot forward is a chunk through an empty state (see state.h).
#pragma once
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "dsv4/config.h"
#include "dsv4/profile.h"
#include "dsv4/state.h"
#include "dsv4/tensor.h"
#include "dsv4/train.h"
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

struct PackedLayer;  // weights rearranged once for the fast path

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

  // One-shot forward over x [B, S, d] (or [S, d]) at positions 0..S-1 -> x's shape.
  // If `debug` is given it is resized to B and filled.
  // Long inputs run in chunks of at most kPrefillChunk tokens through a state,
  // which bounds activation memory (debug output disables the split).
  Tensor forward(TensorView x, std::vector<Intermediates>* debug = nullptr, StageTimes* times = nullptr) const;

  // One-shot forward of x [B, S, d] or [S, d] that also reports where each query attends
  // (one map per sequence). Costs O(H·(W + k)) per query on top of the forward;
  // the [H, S, S + T] dense map is built only when `dense` is true.
  std::vector<AttentionMap> attention_map(TensorView x, bool dense = false) const;
  // The same for one chunk x [S, d] of a sequence through its decode state (the
  // state advances as forward(x, state) would): maps of a long sequence block by
  // block of queries in bounded memory. Dense columns: positions 0..P-1, P =
  // state.position() after the chunk, then the T entries emitted so far.
  AttentionMap attention_map(TensorView x, LayerState& state, bool dense = false) const;

  // A new empty decode state for one sequence (in the layer's numerics).
  LayerState new_state() const;

  // Feed one chunk x [S, d] (or [1, S, d]) of one sequence through its state;
  // positions continue from state.position(). Returns [S, d].
  Tensor forward(TensorView x, LayerState& state, Intermediates* debug = nullptr,
                 StageTimes* times = nullptr) const;

  // A serving engine's step: several sequences, each with its own state and
  // chunk length (ragged), computed in one call. xs[i] is [S_i, d].
  std::vector<Tensor> forward_batch(std::span<const Tensor* const> xs, std::span<LayerState* const> states,
                                    std::vector<Intermediates>* debug = nullptr, StageTimes* times = nullptr) const;
  // The same over views of the callers' buffers (no copy of the inputs).
  std::vector<Tensor> forward_batch(std::span<const TensorView> xs, std::span<LayerState* const> states,
                                    std::vector<Intermediates>* debug = nullptr, StageTimes* times = nullptr) const;

  // Training (docs/training.md). forward_train is forward(x) — the same
  // output bit for bit — that also fills `tape` for backward (reusing the
  // tape's memory if it held an earlier forward). Reference numerics only
  // (deployment numerics round, which has no gradient).
  Tensor forward_train(TensorView x, Tape& tape) const;
  // Gradients of sum(y · dy) for y = forward(x): dy has the shape forward gave.
  // Deterministic: bit-identical for any thread count.
  LayerGradients backward(const Tape& tape, TensorView dy) const;
  // The same, accumulating: adds the weights' gradients into grads.weights (as
  // torch accumulates .grad: micro-batches, reused buffers) and sets grads.dx.
  void backward(const Tape& tape, TensorView dy, LayerGradients& grads) const;
  // Zero gradients of every weight of the layer (dx empty): what to accumulate into.
  LayerGradients zero_gradients() const;
  // Both in one call (the tape is dropped after).
  LayerGradients backward(TensorView x, TensorView dy) const;

  static constexpr int64_t kPrefillChunk = 1024;

 private:
  Config config_;
  LayerType type_;
  LayerWeights weights_;
  std::unique_ptr<PackedLayer> packed_;
};

}  // namespace dsv4
