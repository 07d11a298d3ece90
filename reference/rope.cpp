// The reference's own RoPE frequencies (attention.md, "Frequencies"), written
// apart from the fast path's (src/ops/rope.cpp) so that a bug cannot hide in
// both. Rounded to float32 where the golden reference (torch, float32) rounds,
// so that angles pos·f_i agree to the bit at long positions. Built with
// -ffp-contract=off: torch rounds every product, and a fused multiply-add in
// the YaRN blend would round differently.
#include <algorithm>
#include <cmath>

#include "reference.h"

namespace dsv4::reference {

std::vector<float> rope_inv_freq(const Config& c, LayerType type) {
  const int64_t r = c.qk_rope_head_dim;
  const bool compressed = type != LayerType::sliding, yarn = compressed && !c.rope_scaling.type.empty();
  const double theta = compressed ? c.compress_rope_theta : c.rope_theta;
  const RopeScaling& y = c.rope_scaling;
  double lo = 0, hi = 1;  // YaRN ramp band over pair indices
  if (yarn) {
    const auto corr = [&](double n) {
      return r * std::log(y.original_max_position_embeddings / (2 * M_PI * n)) / (2 * std::log(theta));
    };
    lo = std::max(std::floor(corr(y.beta_fast)), 0.0);
    hi = std::min(std::ceil(corr(y.beta_slow)), static_cast<double>(r - 1));
    if (lo == hi) hi += 0.001;
  }
  std::vector<float> f(static_cast<size_t>(r / 2));
  for (int64_t i = 0; i < r / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(r);
    const float power = static_cast<float>(std::pow(static_cast<double>(static_cast<float>(theta)), exponent));
    const float plain = 1.0f / power;  // θ^(-2i/R)
    if (!yarn) {
      f[i] = plain;
      continue;
    }
    const float ramp =
        std::clamp((static_cast<float>(i) - static_cast<float>(lo)) / static_cast<float>(hi - lo), 0.0f, 1.0f);
    const float keep = 1.0f - ramp;  // torch blends with 1 - (1 - ramp), which float32 rounds apart from ramp
    f[i] = 1.0f / (static_cast<float>(y.factor) * power) * (1.0f - keep) + plain * keep;
  }
  return f;
}

}  // namespace dsv4::reference
