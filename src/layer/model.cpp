// Model: a checkpoint folder handing out Layers; run_layer.
#include "dsv4/model.h"

#include <algorithm>

namespace dsv4 {

Model Model::open(const std::filesystem::path& dir) {
  Model m;
  static_cast<Checkpoint&>(m) = Checkpoint::open(dir);
  return m;
}

Layer Model::layer(int64_t i, LayerOptions options) const {
  return Layer(config(), layer_type(i), load_layer(i, options.weights), options);
}

Tensor run_layer(const Layer& layer, const Tensor& x, int64_t chunk) {
  const int64_t d = layer.config().hidden_size;
  if (x.shape.size() != 3 || x.dim(2) != d)
    fail("run_layer: input must be [B, S, " + std::to_string(d) + "], got " + shape_str(x.shape));
  if (chunk <= 0) return layer.forward(x);
  const int64_t batch = x.dim(0), seq = x.dim(1);
  Tensor out(x.shape);
  for (int64_t b = 0; b < batch; ++b) {
    LayerState state = layer.new_state();
    for (int64_t s0 = 0; s0 < seq; s0 += chunk) {
      const int64_t n = std::min(chunk, seq - s0);
      const auto first = x.data.begin() + (b * seq + s0) * d;
      const Tensor y = layer.forward(Tensor({n, d}, std::vector<float>(first, first + n * d)), state);
      std::copy(y.data.begin(), y.data.end(), out.data.begin() + (b * seq + s0) * d);
    }
  }
  return out;
}

}  // namespace dsv4
