#include "ops/rope.h"

#include <algorithm>
#include <cmath>

namespace dsv4 {

namespace {
// θ^(2i/R) in float32: the reference raises a float32 base to float32 exponents.
float pos_freq(double theta, int64_t i, int64_t rope_dim) {
  const float e = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
  return static_cast<float>(std::pow(static_cast<double>(static_cast<float>(theta)), static_cast<double>(e)));
}
double correction_dim(double rotations, int64_t rope_dim, double theta, double l0) {
  return static_cast<double>(rope_dim) * std::log(l0 / (rotations * 2.0 * M_PI)) / (2.0 * std::log(theta));
}
}  // namespace

std::vector<float> plain_inv_freq(int64_t rope_dim, double theta) {
  std::vector<float> f(static_cast<size_t>(rope_dim / 2));
  for (int64_t i = 0; i < rope_dim / 2; ++i) f[i] = 1.0f / pos_freq(theta, i, rope_dim);
  return f;
}

std::pair<double, double> yarn_band(int64_t rope_dim, double theta, const RopeScaling& s) {
  const double l0 = static_cast<double>(s.original_max_position_embeddings);
  double lo = std::floor(correction_dim(s.beta_fast, rope_dim, theta, l0));
  double hi = std::ceil(correction_dim(s.beta_slow, rope_dim, theta, l0));
  return {std::max(lo, 0.0), std::min(hi, static_cast<double>(rope_dim - 1))};
}

std::vector<float> yarn_inv_freq(int64_t rope_dim, double theta, const RopeScaling& s) {
  auto [lo, hi] = yarn_band(rope_dim, theta, s);
  if (lo == hi) hi += 0.001;
  const float factor = static_cast<float>(s.factor);
  std::vector<float> f(static_cast<size_t>(rope_dim / 2));
  for (int64_t i = 0; i < rope_dim / 2; ++i) {
    const float p = pos_freq(theta, i, rope_dim);
    const float extrapolation = 1.0f / p, interpolation = 1.0f / (factor * p);
    float ramp = (static_cast<float>(i) - static_cast<float>(lo)) / static_cast<float>(hi - lo);
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float keep = 1.0f - ramp;  // share of the unscaled frequency
    f[i] = interpolation * (1.0f - keep) + extrapolation * keep;
  }
  return f;
}

std::vector<float> layer_inv_freq(const Config& c, LayerType t) {
  if (t == LayerType::sliding) return plain_inv_freq(c.qk_rope_head_dim, c.rope_theta);
  if (c.rope_scaling.type.empty()) return plain_inv_freq(c.qk_rope_head_dim, c.compress_rope_theta);
  return yarn_inv_freq(c.qk_rope_head_dim, c.compress_rope_theta, c.rope_scaling);
}

void rope_cos_sin(const std::vector<float>& inv_freq, int64_t pos, float* cos_out, float* sin_out) {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float a = static_cast<float>(pos) * inv_freq[i];  // float32 angle, as the reference
    cos_out[i] = static_cast<float>(std::cos(static_cast<double>(a)));
    sin_out[i] = static_cast<float>(std::sin(static_cast<double>(a)));
  }
}

void rope_rotate(float* x, int64_t rope_dim, const float* cos, const float* sin, bool inverse) {
  for (int64_t i = 0; i < rope_dim / 2; ++i) {
    const float c = cos[i], s = inverse ? -sin[i] : sin[i];
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = b * c + a * s;
  }
}

RopeAngles::RopeAngles(const std::vector<float>& inv_freq, int64_t pos)
    : r_(static_cast<int64_t>(inv_freq.size()) * 2) {
  float* c = cos_;
  float* s = sin_;
  if (r_ / 2 > 512) {
    big_cos_.resize(r_ / 2), big_sin_.resize(r_ / 2);
    c = big_cos_.data(), s = big_sin_.data();
  }
  rope_cos_sin(inv_freq, pos, c, s);
}

void RopeAngles::rotate(float* x, int64_t n, int64_t width, bool inverse) const {
  const float* c = big_cos_.empty() ? cos_ : big_cos_.data();
  const float* s = big_sin_.empty() ? sin_ : big_sin_.data();
  for (int64_t k = 0; k < n; ++k) rope_rotate(x + k * width + width - r_, r_, c, s, inverse);
}

void rope_apply(float* x, int64_t width, const std::vector<float>& inv_freq, int64_t pos, bool inverse) {
  RopeAngles(inv_freq, pos).rotate(x, 1, width, inverse);
}

}  // namespace dsv4
