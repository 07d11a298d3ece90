// RMSNorm in fp32: y = w * x / sqrt(mean(x^2) + eps) (w omitted when null).
#pragma once
#include <cstdint>

namespace dsv4 {

void rms_norm(float* x, int64_t n, const float* weight, double eps);

}  // namespace dsv4
