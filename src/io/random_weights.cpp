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

Tensor linear(int64_t out, int64_t in, uint64_t seed) {
  return random_uniform({out, in}, static_cast<float>(std::sqrt(3.0 / static_cast<double>(in))), seed);
}

Tensor around_one(int64_t n, uint64_t seed) {
  Tensor t = random_uniform({n}, 0.1f, seed);
  for (float& v : t.data) v += 1.0f;
  return t;
}

CompressorWeights compressor(int64_t in_w, int64_t width, int64_t rate, int64_t d, uint64_t seed) {
  return {linear(in_w, d, seed + 1), linear(in_w, d, seed + 2), random_uniform({rate, in_w}, 0.5f, seed + 3),
          around_one(width, seed + 4)};
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
  const int64_t d = c.hidden_size, hd = c.head_dim, h = c.num_attention_heads, g = c.o_groups;
  const uint64_t s = splitmix(seed) & ~0xFFull;
  LayerWeights w;
  w.q_a_proj = linear(c.q_lora_rank, d, s + 1);
  w.q_a_norm = around_one(c.q_lora_rank, s + 2);
  w.q_b_proj = linear(h * hd, c.q_lora_rank, s + 3);
  w.kv_proj = linear(hd, d, s + 4);
  w.kv_norm = around_one(hd, s + 5);
  w.o_a_proj = linear(g * c.o_lora_rank, h * hd / g, s + 6);
  w.o_b_proj = linear(d, g * c.o_lora_rank, s + 7);
  w.sinks = random_uniform({h}, 0.5f, s + 8);
  if (t == LayerType::csa) {
    w.compressor = compressor(2 * hd, hd, c.compress_rate_csa, d, s + 16);
    IndexerWeights ix;
    ix.compressor = compressor(2 * c.index_head_dim, c.index_head_dim, c.compress_rate_csa, d, s + 32);
    ix.q_b_proj = linear(c.index_n_heads * c.index_head_dim, c.q_lora_rank, s + 48);
    ix.weights_proj = linear(c.index_n_heads, d, s + 49);
    w.indexer = std::move(ix);
  } else if (t == LayerType::hca) {
    w.compressor = compressor(hd, hd, c.compress_rate_hca, d, s + 16);
  }
  return w;
}

}  // namespace dsv4
