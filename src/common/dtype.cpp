// The dtype table (names, sizes) and bit-level float conversions. The decoders build the fp32 bit pattern
// directly (the tests check them against an ldexp formula).
#include "common/dtype.h"

#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "dsv4/error.h"

namespace dsv4 {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4},        {DType::I64, "I64", 8},         {DType::BF16, "BF16", 2},
    {DType::F16, "F16", 2},        {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E8M0, "F8_E8M0", 1},
    {DType::F64, "F64", 8},        {DType::I32, "I32", 4},         {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},          {DType::U64, "U64", 8},         {DType::U32, "U32", 4},
    {DType::U16, "U16", 2},        {DType::U8, "U8", 1},           {DType::BOOL, "BOOL", 1},
    {DType::F8_E5M2, "F8_E5M2", 1}};

const DTypeInfo& dtype_info(DType t) {
  for (const DTypeInfo& d : kDTypes)
    if (d.dtype == t) return d;
  fail("invalid DType value " + std::to_string(static_cast<int>(t)));
}

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }

// Little-endian load of an unaligned element.
template <class T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class T, class F>
void decode(std::span<const std::byte> bytes, float* out, F f) {
  const size_t n = bytes.size() / sizeof(T);
  for (size_t i = 0; i < n; ++i) out[i] = f(load<T>(bytes.data() + i * sizeof(T)));
}

}  // namespace

std::string_view dtype_name(DType t) { return dtype_info(t).name; }
size_t dtype_size(DType t) { return dtype_info(t).size; }

std::optional<DType> parse_dtype_name(std::string_view name) {
  for (const DTypeInfo& d : kDTypes)
    if (d.name == name) return d.dtype;
  return std::nullopt;
}

float bf16_to_f32(uint16_t b) { return from_bits(uint32_t(b) << 16); }

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0) {  // zero / subnormal: m · 2^-24, exact in fp32
    const float v = float(m) * 0x1p-24f;
    return sign ? -v : v;
  }
  if (e == 31) return from_bits(sign | 0x7f800000u | (m << 13));  // inf, NaN (payload kept)
  return from_bits(sign | ((e + 112) << 23) | (m << 13));         // rebias 15 -> 127
}

float e8m0_to_f32(uint8_t b) {
  if (b == 0xff) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, int(b) - 127);  // 2^-127 is an fp32 subnormal: exact
}

uint16_t f32_to_bf16(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  if (std::isnan(x)) return uint16_t((u >> 16) | 0x40);  // keep it a (quiet) NaN
  return uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// Round to nearest even on the bits: the 23 mantissa bits rounded to 3 (a
// carry moves into the exponent), rebiased 127 -> 7. Below 2^-6 the codes are
// subnormal: m = the nearest-even integer to |x|·2^9 (8 is the smallest normal).
// Checked against the frexp/ldexp form it replaced on all 2^32 floats.
uint8_t f32_to_e4m3fn(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x), a = u & 0x7fffffffu;
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  if (a > 0x7f800000u) return sign | 0x7f;   // NaN
  if (a >= 0x43e00000u) return sign | 0x7e;  // >= 448 (and inf): saturate
  if (a < 0x3c800000u) return sign | static_cast<uint8_t>(std::nearbyint(from_bits(a) * 0x1p9f));
  return sign | static_cast<uint8_t>(((a + 0x7ffffu + ((a >> 20) & 1)) >> 20) - ((127 - 7) << 3));
}

bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F8_E4M3 || t == DType::F8_E8M0;
}

void decode_to_f32(DType t, std::span<const std::byte> bytes, float* out) {
  switch (t) {
    case DType::F32:
      if (!bytes.empty()) std::memcpy(out, bytes.data(), bytes.size());
      return;
    case DType::BF16: return decode<uint16_t>(bytes, out, bf16_to_f32);
    case DType::F16: return decode<uint16_t>(bytes, out, f16_to_f32);
    case DType::F8_E4M3: return decode<uint8_t>(bytes, out, e4m3fn_to_f32);
    case DType::F8_E8M0: return decode<uint8_t>(bytes, out, e8m0_to_f32);
    default: break;
  }
  fail("decode_to_f32: dtype " + std::string(dtype_name(t)) + " is not a float dtype");
}

}  // namespace dsv4
