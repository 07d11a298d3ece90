#include "ops/norm.h"

#include <cmath>

#include "ops/vec.h"

namespace dsv4 {
namespace {

// Σ x², accumulated in double (4 lanes, fixed order) so the mean of squares is
// exact to fp32 rounding for any n.
double sum_squares(const float* x, int64_t n) {
  int64_t i = 0;
  double ss = 0.0;
#ifdef DSV4_AVX2
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  for (; i + 8 <= n; i += 8) {
    const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    a0 = _mm256_fmadd_pd(lo, lo, a0);
    a1 = _mm256_fmadd_pd(hi, hi, a1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(a0, a1));
  ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#endif
  for (; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  return ss;
}

}  // namespace

float rms_inv(const float* x, int64_t n, double eps) {
  return static_cast<float>(1.0 / std::sqrt(sum_squares(x, n) / static_cast<double>(n) + eps));
}

void rms_norm(float* x, int64_t n, const float* weight, double eps) {
  const float inv = rms_inv(x, n, eps);
  if (weight) {
    for (int64_t i = 0; i < n; ++i) x[i] = weight[i] * (x[i] * inv);
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] * inv;
  }
}

void rms_norm_backward(const float* x, int64_t n, float inv, const float* weight, const float* dy, float* dx) {
  double s = 0;  // Σ g·ŷ with g = w·dy, ŷ = x·inv
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(weight ? weight[i] * dy[i] : dy[i]) * (x[i] * inv);
  const float mean = static_cast<float>(s / static_cast<double>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float g = weight ? weight[i] * dy[i] : dy[i];
    dx[i] = inv * (g - (x[i] * inv) * mean);
  }
}

}  // namespace dsv4
