// RMSNorm in fp32: y = w * x / sqrt(mean(x^2) + eps) (w omitted when null).
#pragma once
#include <cstdint>

namespace dsv4 {

void rms_norm(float* x, int64_t n, const float* weight, double eps);
// 1 / sqrt(mean(x^2) + eps), as rms_norm computes it.
float rms_inv(const float* x, int64_t n, double eps);
// Backward of y = w * x * inv (inv = rms_inv(x)): dx from dy. The weight's
// gradient, dy * x * inv summed over rows, is the caller's (it needs a fixed row order).
void rms_norm_backward(const float* x, int64_t n, float inv, const float* weight, const float* dy, float* dx);

}  // namespace dsv4
