// Seeded random layers for benchmarks and examples (not a model): linear
// weights ~ U(±sqrt(3 / fan_in)), norm weights ~ 1 ± 0.1, biases and sinks ~ U(±0.5).
#pragma once
#include <cstdint>

#include "dsv4/config.h"
#include "dsv4/tensor.h"
#include "dsv4/weights.h"

namespace dsv4 {

// Uniform in [-scale, scale); deterministic for (seed, shape), filled in parallel.
Tensor random_uniform(Shape shape, float scale, uint64_t seed);
LayerWeights random_layer_weights(const Config& c, LayerType t, uint64_t seed);

}  // namespace dsv4
