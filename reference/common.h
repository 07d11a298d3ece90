// The reference's elementwise building blocks, shared by the fp32 forward
// (reference.cpp) and the double-precision forward of the backward
// (backward.cpp). T is the storage type of activations: float rounds each
// stage's result as the fp32 forward does, double keeps it exact.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace dsv4::reference::detail {

// y[r, o] = Σ_i x[r, i] · W[o, i]   (a linear layer; W is [out, in]), accumulated in double.
template <class T, class W>
std::vector<T> linear(const T* x, int64_t rows, const W* w, int64_t out, int64_t in) {
  std::vector<T> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += static_cast<double>(x[r * in + i]) * w[o * in + i];
      y[r * out + o] = static_cast<T>(acc);
    }
  return y;
}

// 1 / sqrt(mean(v²) + eps)
template <class T>
double rms_inv(const T* v, int64_t n, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(v[i]) * v[i];
  return 1.0 / std::sqrt(ss / n + eps);
}

// v = weight ⊙ v / rms(v) in place.
template <class T, class W>
void rms_norm(T* v, int64_t n, const W* weight, double eps) {
  const double inv = rms_inv(v, n, eps);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<T>(v[i] * inv * weight[i]);
}

// v = v / rms(v) in place (no weight).
template <class T>
void rms_norm(T* v, int64_t n, double eps) {
  const double inv = rms_inv(v, n, eps);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<T>(v[i] * inv);
}

// Interleaved RoPE on the trailing 2·|freq| channels of a width-vector; sign -1
// rotates by -angle (the inverse, and the transpose). The angle is the spec's
// float32 product pos·f_i; cos and sin in double.
template <class T>
void rope(T* v, int64_t width, const std::vector<float>& freq, int64_t pos, int sign) {
  const int64_t r = 2 * static_cast<int64_t>(freq.size());
  T* x = v + width - r;
  for (size_t i = 0; i < freq.size(); ++i) {
    const float a = static_cast<float>(pos) * freq[i];
    const double c = std::cos(static_cast<double>(a)), s = sign * std::sin(static_cast<double>(a));
    const double x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = static_cast<T>(x0 * c - x1 * s);
    x[2 * i + 1] = static_cast<T>(x1 * c + x0 * s);
  }
}

// One slot a compressed entry pools over: C/Z row `tok`, column `col`, and
// row `row` of the position bias (same column).
struct Slot {
  int64_t tok, col, row;
};

// The slots of entry w, channel ch (attention.md, "The compressors"). HCA: the
// tokens of window w. CSA (overlap): per j, series A (column ch) of token j of
// window w-1 — absent for w = 0 — then series B (column width + ch) of token j
// of window w.
inline std::vector<Slot> pool_slots(int64_t w, int64_t ch, int64_t rate, int64_t width, bool overlap) {
  std::vector<Slot> s;
  for (int64_t j = 0; j < rate; ++j) {
    if (overlap && w > 0) s.push_back({(w - 1) * rate + j, ch, j});
    s.push_back({w * rate + j, overlap ? width + ch : ch, j});
  }
  return s;
}

}  // namespace dsv4::reference::detail
