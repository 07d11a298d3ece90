// Weight rows in their stored dtype, read as fp32 by the kernels (ops/blas.h):
// bf16, IEEE f16 and FP8 E4M3 with a scale per 128 columns. load8 (AVX2)
// and at() give the same values, equal to the dequantised fp32 weight, so a
// kernel over stored rows rounds exactly like one over the widened matrix.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "ops/blas.h"
#include "ops/vec.h"

namespace dsv4::vec {

struct F16Row {
  const uint16_t* p;
#ifdef DSV4_AVX2
  __m256 load8(int64_t i) const { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))); }
#endif
  float at(int64_t i) const { return f16_to_f32(p[i]); }
};

// FP8 E4M3 codes; scale[b]: the scale of columns 128b..128b+127. The codes
// are decoded as fp16 bit patterns (value / 256, exact, subnormals included,
// no denormal fp32 operands) and multiplied by 256·scale (exact: a power-of-two
// shift of the scale), so value·scale = (value/256)·(256·scale) is one
// correctly rounded product, the same as the dequantised weight. The pattern
// is sign | magnitude << 7: the code sign-extended to 16 bits, shifted left 7
// (magnitude to bits 7-13, the sign to 14 and 15) and bit 14 cleared. (NaN
// codes, S.1111.111, would read as ±480·scale: the loader refuses them.)
struct Fp8Row {
  const uint8_t* p;
  const float* scale;
#ifdef DSV4_AVX2
  __m256 load8(int64_t i) const {
    const __m128i w = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i)));
    const __m128i h = _mm_and_si128(_mm_slli_epi16(w, 7), _mm_set1_epi16(static_cast<short>(0xBFFF)));
    return _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(scale[i >> 7] * 256.0f));
  }
#endif
  float at(int64_t i) const { return (e4m3fn_to_f32(p[i]) * (1.0f / 256.0f)) * (scale[i >> 7] * 256.0f); }
};

// Calls kernel(row_of) with the row type of b's dtype (row_of(j): weight row j).
template <class Kernel>
void with_rows(const WeightRows& b, Kernel kernel) {
  switch (b.dtype) {
    case DType::BF16:
      return kernel([&](int64_t j) { return PtrRow<uint16_t>{static_cast<const uint16_t*>(b.data) + j * b.ld}; });
    case DType::F16: return kernel([&](int64_t j) { return F16Row{static_cast<const uint16_t*>(b.data) + j * b.ld}; });
    case DType::F8_E4M3:
      return kernel([&](int64_t j) {
        return Fp8Row{static_cast<const uint8_t*>(b.data) + j * b.ld, b.scale + ((b.row_base + j) / 128) * b.scale_ld};
      });
    default: return kernel([&](int64_t j) { return PtrRow<float>{static_cast<const float*>(b.data) + j * b.ld}; });
  }
}

}  // namespace dsv4::vec
