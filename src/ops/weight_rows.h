// Weight rows in their stored dtype, read as fp32 by the kernels (ops/blas.h):
// bf16, IEEE f16 and FP8 E4M3 with a factor per 128 columns. load8 (AVX2)
// and at() give the same values, equal to the dequantised fp32 weight, so a
// kernel over stored rows rounds exactly like one over the widened matrix.
#pragma once
#include <cstdint>

#include "io/dtype.h"
#include "ops/vec.h"

namespace dsv4::vec {

struct F16Row {
  const uint16_t* p;
#ifdef DSV4_AVX2
  __m256 load8(int64_t i) const { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))); }
#endif
  float at(int64_t i) const { return f16_to_f32(p[i]); }
};

// FP8 E4M3 codes. factor[b] = 256 × the scale of columns 128b..128b+127: the
// codes are decoded as fp16 bit patterns (value / 256, exact, subnormals
// included, no denormal fp32 operands), so value·scale = (value/256)·(256·scale)
// is one correctly rounded product, the same as the dequantised weight.
struct Fp8Row {
  const uint8_t* p;
  const float* factor;
#ifdef DSV4_AVX2
  __m256 load8(int64_t i) const {
    const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i)));
    const __m128i mag = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x7F)), 7);
    const __m128i sign = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8);
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm_or_si128(mag, sign)), _mm256_set1_ps(factor[i >> 7]));
  }
  // 32 codes at once (i a multiple of 32, so one block): byte c in the high
  // half of a 16-bit lane, shifted right with its sign, bit 14 cleared, is the
  // fp16 pattern s.0eeee.mmm0000000 = value / 256.
  void load32(int64_t i, __m256 w[4]) const {
    const __m256 f = _mm256_set1_ps(factor[i >> 7]);
    const __m256i keep = _mm256_set1_epi16(static_cast<short>(0xBFFF));
    for (int half = 0; half < 2; ++half) {
      const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 16 * half)));
      const __m256i h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(c, 8), 1), keep);
      w[2 * half] = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), f);
      w[2 * half + 1] = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), f);
    }
  }
#endif
  float at(int64_t i) const { return (e4m3fn_to_f32(p[i]) * (1.0f / 256.0f)) * factor[i >> 7]; }
};

}  // namespace dsv4::vec
