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

void rms_norm(float* x, int64_t n, const float* weight, double eps) {
  const float inv = static_cast<float>(1.0 / std::sqrt(sum_squares(x, n) / static_cast<double>(n) + eps));
  if (weight) {
    for (int64_t i = 0; i < n; ++i) x[i] = weight[i] * (x[i] * inv);
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] * inv;
  }
}

}  // namespace dsv4
