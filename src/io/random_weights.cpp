// Seeded random layers (dsv4/random.h), every tensor from the weight table.
#include <cmath>

#include "dsv4/random.h"

namespace dsv4 {
namespace {

uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Each tensor's own stream of the layer seed: fixed, so a seeded layer never
// changes when the table grows.
uint64_t stream(WeightId id) {
  switch (id) {
    case WeightId::q_a_proj: return 1;
    case WeightId::q_a_norm: return 2;
    case WeightId::q_b_proj: return 3;
    case WeightId::kv_proj: return 4;
    case WeightId::kv_norm: return 5;
    case WeightId::o_a_proj: return 6;
    case WeightId::o_b_proj: return 7;
    case WeightId::sinks: return 8;
    case WeightId::compressor_kv_proj: return 17;
    case WeightId::compressor_gate_proj: return 18;
    case WeightId::compressor_position_bias: return 19;
    case WeightId::compressor_kv_norm: return 20;
    case WeightId::indexer_kv_proj: return 33;
    case WeightId::indexer_gate_proj: return 34;
    case WeightId::indexer_position_bias: return 35;
    case WeightId::indexer_kv_norm: return 36;
    case WeightId::indexer_q_b_proj: return 48;
    case WeightId::indexer_weights_proj: return 49;
  }
  return 0;
}

}  // namespace

Tensor random_uniform(Shape shape, float scale, uint64_t seed) {
  Tensor t(std::move(shape));
  const int64_t n = t.numel();
  float* p = t.ptr();
  const uint64_t base = splitmix(seed);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = splitmix(base ^ static_cast<uint64_t>(i));
    p[i] = scale * (static_cast<float>(r >> 40) * (2.0f / 16777216.0f) - 1.0f);  // 24 random bits
  }
  return t;
}

LayerWeights random_layer_weights(const Config& c, LayerType t, uint64_t seed) {
  const uint64_t s = splitmix(seed) & ~0xFFull;
  LayerWeights w = empty_weights(t);
  for_each_weight(w, c, t, [&](const WeightSpec& e, Tensor& x) {
    const uint64_t ts = s + stream(e.id);
    if (is_projection(e.role)) {
      x = random_uniform(e.shape, static_cast<float>(std::sqrt(3.0 / static_cast<double>(e.shape[1]))), ts);
    } else if (e.role == WeightRole::norm) {
      x = random_uniform(e.shape, 0.1f, ts);
      for (float& v : x.data) v += 1.0f;
    } else {  // sinks, position biases
      x = random_uniform(e.shape, 0.5f, ts);
    }
  });
  return w;
}

}  // namespace dsv4
