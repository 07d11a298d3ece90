// Element decoders/encoders for the safetensors float dtypes. Decoders are
// exact (every bf16/f16/e4m3/e8m0 value is an fp32 value); encoders round to
// nearest even.
#pragma once
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>

#include "dsv4/dtype.h"

namespace dsv4 {

float bf16_to_f32(uint16_t b);
float f16_to_f32(uint16_t h);  // IEEE half: subnormals, ±inf, NaN
float e8m0_to_f32(uint8_t b);  // OCP E8M0 scale: 2^(b-127), 0xFF = NaN
// 2^-120 times the E4M3 value of a (non-NaN) code, from its bits alone: the 7
// magnitude bits under the fp32 exponent field give (1 + m/8)·2^(E-127), and
// m·2^-129 (an fp32 subnormal) for E = 0; the sign goes on top. Exact; what the
// vector kernels compute in three integer instructions.
inline float e4m3_times_2pow_m120(uint8_t c) {
  return std::bit_cast<float>((static_cast<uint32_t>(c & 0x80) << 24) | (static_cast<uint32_t>(c & 0x7f) << 20));
}

namespace detail {
constexpr float e4m3fn_value(uint8_t b) {
  const uint32_t sign = uint32_t(b >> 7) << 31, e = (b >> 3) & 0xf, m = b & 7;
  if (e == 15 && m == 7) return std::bit_cast<float>(sign | 0x7fc00000u);
  if (e == 0) {  // zero / subnormal: m · 2^-9
    const float v = float(m) * 0x1p-9f;
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((e + 120) << 23) | (m << 20));  // rebias 7 -> 127
}
// All 256 values: dequantising reads one per weight, inline.
inline constexpr auto kE4m3fn = [] {
  std::array<float, 256> t{};
  for (int b = 0; b < 256; ++b) t[size_t(b)] = e4m3fn_value(uint8_t(b));
  return t;
}();
}  // namespace detail
// OCP FP8 E4M3FN: bias 7, no inf, S.1111.111 = NaN, max 448.
inline float e4m3fn_to_f32(uint8_t b) { return detail::kE4m3fn[b]; }

uint16_t f32_to_bf16(float x);   // NaN stays NaN
uint8_t f32_to_e4m3fn(float x);  // saturates to ±448, NaN -> 0x7F|sign

// Dtypes that f32() converts: F32, BF16, F16, F8_E4M3, F8_E8M0.
bool is_float_dtype(DType t);
// Decodes bytes.size() / dtype_size(t) elements of a float dtype into out.
// The bytes need not be aligned.
void decode_to_f32(DType t, std::span<const std::byte> bytes, float* out);

}  // namespace dsv4
