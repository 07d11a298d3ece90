#include "ops/norm.h"

#include <cmath>

namespace dsv4 {

void rms_norm(float* x, int64_t n, const float* weight, double eps) {
  // Double accumulation keeps the mean of squares exact to fp32 rounding for any n.
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  if (weight) {
    for (int64_t i = 0; i < n; ++i) x[i] = weight[i] * (x[i] * inv);
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] * inv;
  }
}

void rms_norm_rows(float* x, int64_t rows, int64_t n, int64_t ld, const float* weight, double eps) {
  for (int64_t r = 0; r < rows; ++r) rms_norm(x + r * ld, n, weight, eps);
}

}  // namespace dsv4
