// Rotary position embedding: interleaved, partial (trailing R channels).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "dsv4/config.h"

namespace dsv4 {

// f_i = θ^(-2i/R), i < R/2, in float32 as the reference computes it.
std::vector<float> plain_inv_freq(int64_t rope_dim, double theta);
// YaRN band [lo, hi] of pair indices (spec: corr(β_fast) floored, corr(β_slow) ceiled).
std::pair<double, double> yarn_band(int64_t rope_dim, double theta, const RopeScaling& s);
std::vector<float> yarn_inv_freq(int64_t rope_dim, double theta, const RopeScaling& s);
// The frequencies a layer of this type uses (sliding: plain θ; CSA/HCA: YaRN θ_c).
std::vector<float> layer_inv_freq(const Config& c, LayerType t);

// cos/sin of the float32 angle float(pos)·f_i for every pair: out has R/2 each.
void rope_cos_sin(const std::vector<float>& inv_freq, int64_t pos, float* cos_out, float* sin_out);
// Rotate the R channels at x (pairs (x[2i], x[2i+1])) by the given cos/sin;
// `inverse` rotates by the negative angle (de-rotation of the attention output).
void rope_rotate(float* x, int64_t rope_dim, const float* cos, const float* sin, bool inverse = false);
// Convenience: rotate the trailing R channels of a `width`-vector at position pos.
void rope_apply(float* x, int64_t width, const std::vector<float>& inv_freq, int64_t pos, bool inverse = false);

// The cos/sin of one position, to rotate many vectors at it (the heads of a
// token): rotate() turns the trailing R channels of each of n `width`-vectors
// at x (stride width); `inverse` by the negative angle, which is also the
// rotation's transpose (the backward's).
class RopeAngles {
 public:
  RopeAngles(const std::vector<float>& inv_freq, int64_t pos);
  void rotate(float* x, int64_t n, int64_t width, bool inverse = false) const;

 private:
  int64_t r_;
  float cos_[512], sin_[512];  // R/2 <= 512 here (V4: 32), longer in the vectors below
  std::vector<float> big_cos_, big_sin_;
};

}  // namespace dsv4
