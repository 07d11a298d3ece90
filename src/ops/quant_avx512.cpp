// The AVX-512F widening of a main row (ops/quant.h's kv row: E4M3 codes with
// a power-of-two scale per 64, then bf16 RoPE dims): 16 values per step with
// the scalar decode's exact operations (sign and magnitude bits placed in an
// fp32, times 2^120, times the block scale), so the values are the same. It
// runs on every cached entry a deployment decode step reads (HCA: all of them,
// per flash-decoding run), where the compiler's AVX2 form of the scalar loop
// cost ~15% of a run. This file alone is built with -mavx512f (quant.cpp asks
// the CPU first) and includes no header with inline library code.
#include "ops/quant.h"

#ifndef __AVX512F__
namespace dsv4::quant {
bool kv_row_decode_avx512(const uint8_t*, int64_t, int64_t, float*) { return false; }
}  // namespace dsv4::quant
#else
#include <immintrin.h>

namespace dsv4::quant {
namespace {

// The scalar decode's steps (quant.cpp: e4m3_bits, scale_of), local so that nothing inline is shared.
float bits_to_f32(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}
float e4m3(uint8_t c) {
  return bits_to_f32((static_cast<uint32_t>(c & 0x80) << 24) | (static_cast<uint32_t>(c & 0x7f) << 20)) * 0x1p120f;
}
float scale(uint8_t byte) { return bits_to_f32(byte ? static_cast<uint32_t>(byte) << 23 : 0x00400000u); }

}  // namespace

bool kv_row_decode_avx512(const uint8_t* row, int64_t d, int64_t r, float* out) {
  const int64_t nope = d - r;
  const uint8_t* scales = row + nope + 2 * r;
  const __m512i sign = _mm512_set1_epi32(0x80), mag = _mm512_set1_epi32(0x7f);
  const __m512 two120 = _mm512_set1_ps(0x1p120f);
  for (int64_t b = 0, k = 0; b < nope; b += kFp8Block, ++k) {
    const int64_t end = nope < b + kFp8Block ? nope : b + kFp8Block;
    const float s = scale(scales[k]);
    const __m512 sv = _mm512_set1_ps(s);
    int64_t i = b;
    for (; i + 16 <= end; i += 16) {
      const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i)));
      const __m512i f = _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(c, sign), 24),
                                        _mm512_slli_epi32(_mm512_and_si512(c, mag), 20));
      _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(f), two120), sv));
    }
    for (; i < end; ++i) out[i] = e4m3(row[i]) * s;
  }
  const uint8_t* rope = row + nope;  // bf16: the top half of an fp32
  int64_t i = 0;
  for (; i + 16 <= r; i += 16) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rope + 2 * i)));
    _mm512_storeu_ps(out + nope + i, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
  }
  for (; i < r; ++i) out[nope + i] = bits_to_f32(static_cast<uint32_t>(rope[2 * i] | rope[2 * i + 1] << 8) << 16);
  return true;
}

}  // namespace dsv4::quant
#endif
