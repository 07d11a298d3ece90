// official_numerics.md, "Formats" and "Block quantisers", as straight loops.
#include "numerics.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

namespace dsv4::reference {
namespace {

// The non-negative finite values of a format in code order (code = index).
std::vector<double> e4m3_values() {
  std::vector<double> v;
  for (int code = 0; code < 127; ++code) {  // 127 = 0x7f is NaN
    const int e = code >> 3, m = code & 7;
    v.push_back(e == 0 ? m * std::ldexp(1.0, -9) : (1 + m / 8.0) * std::ldexp(1.0, e - 7));
  }
  return v;
}
const std::vector<double> kE4m3 = e4m3_values();
const std::vector<double> kE2m1 = {0, 0.5, 1, 1.5, 2, 3, 4, 6};

// A rounding step below this many `err` changes nothing a 1e-5 comparison sees.
constexpr double kNegligibleStep = 1e-6;

// Nearest of `values` to |x| (ties: the even code), sign of x; records the
// distance of |x| to the nearest midpoint in units of `err`.
float round_to(const std::vector<double>& values, float x, double err, double& closest) {
  const double a = std::min(std::fabs(static_cast<double>(x)), values.back());
  size_t best = 0;
  for (size_t i = 1; i < values.size(); ++i) {
    const double d = std::fabs(a - values[i]), db = std::fabs(a - values[best]);
    if (d < db || (d == db && i % 2 == 0)) best = i;
  }
  for (size_t i = 0; i + 1 < values.size(); ++i) {
    if (values[i + 1] - values[i] < kNegligibleStep * err) continue;
    const double mid = (values[i] + values[i + 1]) / 2;
    closest = std::min(closest, std::fabs(a - mid) / err);
  }
  return static_cast<float>(std::signbit(x) ? -values[best] : values[best]);
}

// Relative distance of p to the nearest power of two (where ceil_pow2 steps).
double to_pow2_step(float p) {
  const double lo = std::ldexp(1.0, std::ilogb(p));
  return std::min(p - lo, 2 * lo - p) / p;
}

float block_max(const float* x, int64_t n) {
  float a = 0;
  for (int64_t i = 0; i < n; ++i) a = std::max(a, std::fabs(x[i]));
  return a;
}

}  // namespace

float ceil_pow2(float v) {
  double p = std::ldexp(1.0, -149);
  while (p < v) p *= 2;
  return static_cast<float>(p);
}

float e4m3_round(float v) {
  double unused = 0;
  return round_to(kE4m3, v, 1, unused);
}

float e2m1_round(float v) {
  double unused = 0;
  return round_to(kE2m1, v, 1, unused);
}

void hadamard(float* x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  const float f = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * f;
}

void Rounder::fp8_block(float* x, int64_t n, const float* err) {
  const float a = std::max(block_max(x, n), 1e-4f), p = a * (1.0f / 448.0f), s = ceil_pow2(p);
  closest = std::min(closest, to_pow2_step(p));
  for (int64_t i = 0; i < n; ++i)
    x[i] = round_to(kE4m3, std::clamp(x[i] / s, -448.0f, 448.0f), (err ? err[i] : a) / s, closest) * s;
}

void Rounder::fp4_block(float* x, int64_t n) {
  const float a = std::max(block_max(x, n), 6.0f * std::ldexp(1.0f, -126)), p = a * (1.0f / 6.0f), s = ceil_pow2(p);
  closest = std::min(closest, to_pow2_step(p));
  for (int64_t i = 0; i < n; ++i) x[i] = round_to(kE2m1, std::clamp(x[i] / s, -6.0f, 6.0f), a / s, closest) * s;
}

void Rounder::bf16(float* x, int64_t n, const float* err) {
  for (int64_t i = 0; i < n; ++i) {
    // The two bf16 neighbours of x (bf16 = the top 16 bits of an fp32), nearest, ties to the even one.
    const uint32_t u = std::bit_cast<uint32_t>(x[i]), down = u & 0xffff0000u, up = down + 0x10000u;
    const double lo = std::bit_cast<float>(down), hi = std::bit_cast<float>(up), v = x[i];
    const double dl = std::fabs(v - lo), dh = std::fabs(hi - v);
    if (hi - lo >= kNegligibleStep * err[i]) closest = std::min(closest, std::fabs(dl - dh) / 2 / err[i]);
    x[i] = static_cast<float>(dl < dh || (dl == dh && (down & 0x10000u) == 0) ? lo : hi);
  }
}

void Rounder::kv_row(float* x, int64_t d, int64_t r, const float* norm_weight) {
  // x = w ⊙ (a unit-rms row), then RoPE mixes pairs: errors scale with |x_i| + |w_i| (pair-wise for RoPE).
  std::vector<float> err(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) err[i] = std::fabs(x[i]) + std::fabs(norm_weight[i]);
  for (int64_t i = d - r; i + 1 < d; i += 2) err[i] = err[i + 1] = std::max(err[i], err[i + 1]);
  for (int64_t b = 0; b < d - r; b += 64) fp8_block(x + b, std::min<int64_t>(64, d - r - b), err.data() + b);
  bf16(x + d - r, r, err.data() + d - r);
}

void Rounder::index_vec(float* x, int64_t n) {
  hadamard(x, n);
  for (int64_t b = 0; b < n; b += 32) fp4_block(x + b, std::min<int64_t>(32, n - b));
}

}  // namespace dsv4::reference
