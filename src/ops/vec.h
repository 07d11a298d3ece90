// Small fp32 vector kernels for the hand-written stages. AVX2+FMA when the
// build targets x86-64-v3, plain loops otherwise; the summation order is
// fixed either way, so results never depend on the thread count.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DSV4_AVX2 1
#endif

namespace dsv4::vec {

// Weights arrive as fp32 or bf16 (the top half of an fp32): load8 / widen
// give fp32 either way, so both kernels share one summation order.
inline float widen(float x) { return x; }
inline float widen(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
#ifdef DSV4_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#endif

// A weight row as fp32 values: load8(i) (AVX2) gives elements i..i+7, at(i)
// one element; both give the same values, so every element dtype shares one
// summation order in the row kernels (ops/row_invariant.cpp; bf16/f16/FP8 rows in
// ops/weight_decode.h).
template <class B>
struct PtrRow {
  const B* p;
#ifdef DSV4_AVX2
  __m256 load8(int64_t i) const { return vec::load8(p + i); }
#endif
  float at(int64_t i) const { return widen(p[i]); }
};

// y *= a
inline void scale(float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

#ifdef DSV4_AVX2
// e^x for 8 lanes (Cephes polynomial, ~1 ulp on [-87, 88]; flushes to 0 below).
inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
#endif

// max_i x[i]·a, after scaling x in place by a.
inline float scale_max(float* x, float a, int64_t n, float init) {
  int64_t i = 0;
  float m = init;
#ifdef DSV4_AVX2
  const __m256 va = _mm256_set1_ps(a);
  __m256 vm = _mm256_set1_ps(init);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), va);
    _mm256_storeu_ps(x + i, v);
    vm = _mm256_max_ps(vm, v);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vm);
  for (float l : lanes) m = m > l ? m : l;
#endif
  for (; i < n; ++i) {
    x[i] *= a;
    m = m > x[i] ? m : x[i];
  }
  return m;
}

// x[i] = e^(x[i] - shift); returns the sum (fixed order).
inline float exp_sum(float* x, int64_t n, float shift) {
  int64_t i = 0;
  float s = 0.0f;
#ifdef DSV4_AVX2
  const __m256 vs = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  for (float l : lanes) s += l;
#endif
  for (; i < n; ++i) s += (x[i] = std::exp(x[i] - shift));
  return s;
}

}  // namespace dsv4::vec
