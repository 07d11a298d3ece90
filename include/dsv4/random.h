// Seeded random layers for benchmarks and examples (not a model): linear
// weights ~ U(±sqrt(3 / fan_in)), norm weights ~ 1 ± 0.1, biases and sinks ~ U(±0.5).
#pragma once
#include <cstdint>

#include "dsv4/config.h"
#include "dsv4/state.h"
#include "dsv4/tensor.h"
#include "dsv4/weights.h"

namespace dsv4 {

// Uniform in [-scale, scale); deterministic for (seed, shape), filled in parallel.
Tensor random_uniform(Shape shape, float scale, uint64_t seed);
LayerWeights random_layer_weights(const Config& c, LayerType t, uint64_t seed);

// A (c, t, n) decode state as after `tokens` tokens, built without a prefill
// (seeded; any thread count gives the same state): floor(tokens/rate) entries
// and indexer keys, the window's last min(tokens, W-1) rows, the compressors'
// pending and series-A rows, all with the shapes and formats of a prefilled
// state and values of its scale (rows sd 1 before the deployment rounding,
// pending rows sd 0.6). Decode from it reads and selects as much as from a
// prefilled state of that length; its outputs are not any input's.
LayerState random_state(const Config& c, LayerType t, int64_t tokens, uint64_t seed, Numerics n = Numerics::reference);

}  // namespace dsv4
