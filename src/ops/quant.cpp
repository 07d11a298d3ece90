// Deployment-numerics formats. Encoding is scalar (it runs once per new row);
// decoding is a table lookup and one multiply per value (it runs on every
// cached row a step reads).
#include "ops/quant.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>

#include "common/dtype.h"

namespace dsv4::quant {
namespace {

constexpr float kE2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> v{};
    for (int b = 0; b < 256; ++b) v[b] = e4m3fn_to_f32(static_cast<uint8_t>(b));
    return v;
  }();
  return t;
}

// Both values of a byte of packed E2M1 codes (low nibble first).
const std::array<std::array<float, 2>, 256>& e2m1_pair_table() {
  static const std::array<std::array<float, 2>, 256> t = [] {
    std::array<std::array<float, 2>, 256> v{};
    for (int b = 0; b < 256; ++b) v[b] = {e2m1_decode(b & 0xf), e2m1_decode(b >> 4)};
    return v;
  }();
  return t;
}

float max_abs(const float* x, int64_t n) {
  float a = 0.0f;
  for (int64_t i = 0; i < n; ++i) a = std::max(a, std::fabs(x[i]));
  return a;
}

// 2^(byte - 127) from the bits (byte 0 is the fp32 subnormal 2^-127).
float scale_of(uint8_t byte) { return std::bit_cast<float>(byte ? static_cast<uint32_t>(byte) << 23 : 0x00400000u); }

// E4M3 code -> fp32 without a table (vectorises; NaN codes are never stored).
inline float e4m3_bits(uint8_t c) { return e4m3_times_2pow_m120(c) * 0x1p120f; }

}  // namespace

int ceil_pow2_exp(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  const int field = static_cast<int>((u >> 23) & 0xff);
  const uint32_t man = u & 0x7fffff;
  if (field == 0)  // subnormal: man · 2^-149
    return -149 + std::bit_width(man) - (std::has_single_bit(man) ? 1 : 0);
  return field - 127 + (man != 0 ? 1 : 0);
}

float ceil_pow2(float v) { return std::ldexp(1.0f, ceil_pow2_exp(v)); }

uint8_t e2m1_encode(float x) {
  const uint8_t sign = std::signbit(x) ? 8 : 0;
  const float a = std::min(std::fabs(x), 6.0f);
  int i = 0;
  while (i < 7) {  // nearest; at a midpoint the even code
    const float mid = 0.5f * (kE2m1[i] + kE2m1[i + 1]);
    if (a < mid || (a == mid && i % 2 == 0)) break;
    ++i;
  }
  return static_cast<uint8_t>(sign | i);
}

float e2m1_decode(uint8_t code) {
  const float v = kE2m1[code & 7];
  return code & 8 ? -v : v;
}

float e4m3_decode(uint8_t code) { return e4m3_table()[code]; }

uint8_t fp8_block_encode(const float* x, int64_t n, uint8_t* codes) {
  const int e = ceil_pow2_exp(std::max(max_abs(x, n), 1e-4f) * (1.0f / 448.0f));
  const float s = std::ldexp(1.0f, e);
  for (int64_t i = 0; i < n; ++i) codes[i] = f32_to_e4m3fn(std::clamp(x[i] / s, -448.0f, 448.0f));
  return static_cast<uint8_t>(e + 127);
}

uint8_t fp4_block_encode(const float* x, int64_t n, uint8_t* codes) {
  const int e = ceil_pow2_exp(std::max(max_abs(x, n), 6.0f * 0x1p-126f) * (1.0f / 6.0f));
  const float s = std::ldexp(1.0f, e);
  for (int64_t i = 0; i < n; ++i) codes[i] = e2m1_encode(x[i] / s);  // e2m1_encode clamps to ±6
  return static_cast<uint8_t>(e + 127);
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
  for (int64_t i = 0; i < n; ++i) x[i] *= f;
}

void fp8_qdq(float* x, int64_t n) {
  uint8_t codes[kFp8Block];
  for (int64_t b = 0; b < n; b += kFp8Block) {
    const int64_t len = std::min(kFp8Block, n - b);
    const float s = scale_of(fp8_block_encode(x + b, len, codes));
    for (int64_t i = 0; i < len; ++i) x[b + i] = e4m3_decode(codes[i]) * s;
  }
}

void fp4_qdq(float* x, int64_t n) {
  uint8_t codes[kFp4Block];
  for (int64_t b = 0; b < n; b += kFp4Block) {
    const int64_t len = std::min(kFp4Block, n - b);
    const float s = scale_of(fp4_block_encode(x + b, len, codes));
    for (int64_t i = 0; i < len; ++i) x[b + i] = e2m1_decode(codes[i]) * s;
  }
}

// ---- row formats ---------------------------------------------------------------

size_t kv_row_bytes(int64_t d, int64_t r) {
  const int64_t nope = d - r, raw = nope + 2 * r + (nope + kFp8Block - 1) / kFp8Block;
  return static_cast<size_t>((raw + 7) / 8 * 8);
}

void kv_row_encode(const float* x, int64_t d, int64_t r, uint8_t* row, float* dq) {
  const int64_t nope = d - r;
  uint8_t* scales = row + nope + 2 * r;
  std::memset(row, 0, kv_row_bytes(d, r));
  for (int64_t b = 0, k = 0; b < nope; b += kFp8Block, ++k) {
    const int64_t len = std::min(kFp8Block, nope - b);
    scales[k] = fp8_block_encode(x + b, len, row + b);
  }
  for (int64_t i = 0; i < r; ++i) {
    const uint16_t h = f32_to_bf16(x[nope + i]);
    std::memcpy(row + nope + 2 * i, &h, 2);
  }
  if (dq) kv_row_decode(row, d, r, dq);
}

void kv_row_decode(const uint8_t* row, int64_t d, int64_t r, float* out) {
#if defined(__x86_64__) && defined(__AVX2__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512 && kv_row_decode_avx512(row, d, r, out)) return;
#endif
  kv_row_decode_scalar(row, d, r, out);
}

void kv_row_decode_scalar(const uint8_t* row, int64_t d, int64_t r, float* out) {
  const int64_t nope = d - r;
  const uint8_t* scales = row + nope + 2 * r;
  for (int64_t b = 0, k = 0; b < nope; b += kFp8Block, ++k) {
    const int64_t end = std::min(nope, b + kFp8Block);
    const float s = scale_of(scales[k]);
    for (int64_t i = b; i < end; ++i) out[i] = e4m3_bits(row[i]) * s;
  }
  for (int64_t i = 0; i < r; ++i) {
    uint16_t h;
    std::memcpy(&h, row + nope + 2 * i, 2);
    out[nope + i] = bf16_to_f32(h);
  }
}

size_t index_row_bytes(int64_t n) { return static_cast<size_t>((n + 1) / 2 + (n + kFp4Block - 1) / kFp4Block); }

void index_row_encode(const float* x, int64_t n, uint8_t* row, float* dq) {
  uint8_t* scales = row + (n + 1) / 2;
  std::memset(row, 0, index_row_bytes(n));
  uint8_t codes[kFp4Block];
  for (int64_t b = 0, k = 0; b < n; b += kFp4Block, ++k) {
    const int64_t len = std::min(kFp4Block, n - b);
    scales[k] = fp4_block_encode(x + b, len, codes);
    for (int64_t i = 0; i < len; ++i) row[(b + i) / 2] |= static_cast<uint8_t>(codes[i] << (4 * ((b + i) & 1)));
  }
  if (dq) index_row_decode(row, n, dq);
}

void index_row_decode(const uint8_t* row, int64_t n, float* out) {
  const uint8_t* scales = row + (n + 1) / 2;
  const auto& lut = e2m1_pair_table();
  for (int64_t b = 0, k = 0; b < n; b += kFp4Block, ++k) {  // blocks of 32 start at even indices
    const int64_t end = std::min(n, b + kFp4Block), pairs = (end - b) / 2;
    const float s = scale_of(scales[k]);
    for (int64_t j = 0; j < pairs; ++j) {
      const auto& pair = lut[row[b / 2 + j]];
      out[b + 2 * j] = pair[0] * s;
      out[b + 2 * j + 1] = pair[1] * s;
    }
    if ((end - b) % 2) out[end - 1] = lut[row[(end - 1) / 2]][0] * s;  // odd n: the last value alone
  }
}

}  // namespace dsv4::quant
