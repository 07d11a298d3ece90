// Deployment-numerics formats (src/ops/quant) against exhaustive tables and
// the naive reference's independent versions (reference/numerics): E4M3 and
// E2M1 codes, ties to even, ceil_pow2 at the power-of-two steps, Hadamard,
// block quantisers on all-zero, tie, out-of-range, subnormal and outlier
// blocks, and the two row layouts byte for byte.
#include "ops/quant.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "numerics.h"

namespace dsv4 {
namespace {

double e4m3_formula(int code) {  // non-negative codes 0..126
  const int e = code >> 3, m = code & 7;
  return e == 0 ? m * std::ldexp(1.0, -9) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
}
const double kE2m1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};

TEST(QuantFormats, AllE4m3CodesDecodeExactlyAndRoundTrip) {
  for (int b = 0; b < 256; ++b) {
    const int mag = b & 0x7f;
    const float got = quant::e4m3_decode(static_cast<uint8_t>(b));
    if (mag == 0x7f) {
      EXPECT_TRUE(std::isnan(got)) << b;
      continue;
    }
    const double want = (b & 0x80 ? -1 : 1) * e4m3_formula(mag);
    EXPECT_EQ(static_cast<double>(got), want) << b;
    EXPECT_EQ(std::signbit(got), (b & 0x80) != 0) << b;
    EXPECT_EQ(f32_to_e4m3fn(got), b) << b;  // every finite code is its own rounding
  }
}

TEST(QuantFormats, AllE2m1CodesDecodeExactlyAndRoundTrip) {
  for (int b = 0; b < 16; ++b) {
    const float got = quant::e2m1_decode(static_cast<uint8_t>(b));
    EXPECT_EQ(static_cast<double>(got), (b & 8 ? -1 : 1) * kE2m1[b & 7]) << b;
    EXPECT_EQ(std::signbit(got), (b & 8) != 0) << b;
    EXPECT_EQ(quant::e2m1_encode(got), b) << b;
  }
}

// Every midpoint between neighbouring values goes to the even code; a hair to
// either side goes to the nearer value. Both signs; the reference agrees.
TEST(QuantFormats, EveryMidpointRoundsToEven) {
  for (int c = 0; c + 1 < 127; ++c) {
    const float mid = static_cast<float>((e4m3_formula(c) + e4m3_formula(c + 1)) / 2);  // exact in fp32
    const int even = c % 2 == 0 ? c : c + 1;
    for (float s : {1.0f, -1.0f}) {
      const int sign = s < 0 ? 0x80 : 0;
      EXPECT_EQ(f32_to_e4m3fn(s * mid), sign | even) << "E4M3 midpoint after code " << c;
      EXPECT_EQ(f32_to_e4m3fn(s * std::nextafter(mid, 0.0f)), sign | c) << c;
      EXPECT_EQ(f32_to_e4m3fn(s * std::nextafter(mid, 1e9f)), sign | (c + 1)) << c;
      EXPECT_EQ(reference::e4m3_round(s * mid), quant::e4m3_decode(static_cast<uint8_t>(sign | even))) << c;
    }
  }
  for (int c = 0; c + 1 < 8; ++c) {
    const float mid = static_cast<float>((kE2m1[c] + kE2m1[c + 1]) / 2);
    const int even = c % 2 == 0 ? c : c + 1;
    for (float s : {1.0f, -1.0f}) {
      const int sign = s < 0 ? 8 : 0;
      EXPECT_EQ(quant::e2m1_encode(s * mid), sign | even) << "E2M1 midpoint after code " << c;
      EXPECT_EQ(quant::e2m1_encode(s * std::nextafter(mid, 0.0f)), sign | c) << c;
      EXPECT_EQ(quant::e2m1_encode(s * std::nextafter(mid, 1e9f)), sign | (c + 1)) << c;
      EXPECT_EQ(reference::e2m1_round(s * mid), quant::e2m1_decode(static_cast<uint8_t>(sign | even))) << c;
    }
  }
  // The spec's list: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4.
  const float in[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f}, out[] = {0, 1, 1, 2, 2, 4, 4};
  for (int i = 0; i < 7; ++i) EXPECT_EQ(quant::e2m1_decode(quant::e2m1_encode(in[i])), out[i]) << in[i];
}

TEST(QuantFormats, BeyondTheRangeClamps) {
  for (float v : {448.0f, 449.0f, 464.0f, 500.0f, 1e30f}) {
    EXPECT_EQ(f32_to_e4m3fn(v), 0x7e) << v;  // 448, never NaN
    EXPECT_EQ(f32_to_e4m3fn(-v), 0xfe) << v;
    EXPECT_EQ(reference::e4m3_round(v), 448.0f) << v;
  }
  for (float v : {6.0f, 6.5f, 7.0f, 1e30f}) {
    EXPECT_EQ(quant::e2m1_encode(v), 7) << v;
    EXPECT_EQ(quant::e2m1_encode(-v), 15) << v;
    EXPECT_EQ(reference::e2m1_round(v), 6.0f) << v;
  }
}

TEST(QuantFormats, CeilPow2AtAndAroundEveryPowerOfTwo) {
  for (int e = -149; e <= 127; ++e) {
    const float p = std::ldexp(1.0f, e);
    EXPECT_EQ(quant::ceil_pow2(p), p) << e;
    EXPECT_EQ(quant::ceil_pow2_exp(p), e) << e;
    EXPECT_EQ(reference::ceil_pow2(p), p) << e;
    if (e < 127) {
      const float above = std::nextafter(p, INFINITY);
      EXPECT_EQ(quant::ceil_pow2(above), 2 * p) << e;
      EXPECT_EQ(reference::ceil_pow2(above), 2 * p) << e;
    }
    if (e > -148) {  // below 2^-148 the next float down is 2^-149 itself
      EXPECT_EQ(quant::ceil_pow2(std::nextafter(p, 0.0f)), p) << e;
    }
  }
  // log2f would round 2^k·(1+2^-23) down to k; the bits do not.
  EXPECT_EQ(quant::ceil_pow2(std::nextafter(1024.0f, INFINITY)), 2048.0f);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-40.0f, 40.0f);
  for (int i = 0; i < 10000; ++i) {
    const float v = std::exp2(u(rng));
    EXPECT_EQ(quant::ceil_pow2(v), reference::ceil_pow2(v)) << v;
  }
}

TEST(QuantFormats, HadamardIsTheMatrixAndItsOwnInverse) {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (int64_t n = 2; n <= 128; n *= 2) {
    std::vector<float> x(n), y;
    for (float& v : x) v = u(rng);
    y = x;
    quant::hadamard(y.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      double want = 0;  // H[i][j] = (-1)^popcount(i & j) / sqrt(n)
      for (int64_t j = 0; j < n; ++j) want += (std::popcount(static_cast<uint64_t>(i & j)) % 2 ? -1.0 : 1.0) * x[j];
      want /= std::sqrt(static_cast<double>(n));
      EXPECT_NEAR(y[i], want, 1e-5) << "n=" << n << " i=" << i;
    }
    std::vector<float> r = y;
    reference::hadamard(r.data(), n);
    quant::hadamard(y.data(), n);  // twice: back to x
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(y[i], x[i], 1e-5) << "n=" << n << " i=" << i;
      EXPECT_EQ(y[i], r[i]) << "n=" << n << " i=" << i;  // the same fp32 butterflies
    }
  }
}

TEST(QuantRows, SizesAtV4Dims) {
  EXPECT_EQ(quant::kv_row_bytes(512, 64), 584u);  // 448 E4M3 + 128 bf16 + 7 scales + 1 pad
  EXPECT_EQ(quant::index_row_bytes(128), 68u);    // 64 bytes of E2M1 pairs + 4 scales
  EXPECT_EQ(quant::kv_row_bytes(32, 8), 48u);     // 24 + 16 + 1 = 41, padded to a multiple of 8
  EXPECT_EQ(quant::kv_row_bytes(200, 8), 216u);   // 192 + 16 + 3 = 211 -> 216
  EXPECT_EQ(quant::index_row_bytes(48), 26u);     // a shorter last block: 24 + 2
}

// Blocks that reach every branch of the quantisers, at block scale 2^e.
enum class Fill { zeros, ties, subnormal, outlier, random };
void fill_fp8(std::vector<float>& x, int64_t from, int64_t n, Fill f, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  const float s = std::ldexp(1.0f, static_cast<int>(rng() % 20) - 10);
  for (int64_t i = 0; i < n; ++i) {
    const int c = static_cast<int>(rng() % 126);
    const float mid = static_cast<float>((e4m3_formula(c) + e4m3_formula(c + 1)) / 2);
    const float sub = static_cast<float>((rng() % 16) * std::ldexp(1.0, -10));  // subnormal codes and their ties
    const float v = f == Fill::zeros       ? 0.0f
                    : f == Fill::ties      ? mid * s
                    : f == Fill::subnormal ? sub * s
                    : f == Fill::outlier   ? 0.01f * g(rng)
                                           : g(rng);
    x[from + i] = rng() % 2 ? -v : v;
  }
  if (f == Fill::ties || f == Fill::subnormal) x[from] = 400.0f * s;  // the block max fixes the scale at s
  if (f == Fill::outlier) x[from + n / 2] = 1000.0f;
}

// Fast row codecs == the reference's roundings bit for bit; decode(encode(x)) == the dequantised x.
TEST(QuantRows, KvRowsEqualTheReferenceOnEveryKindOfBlock) {
  std::mt19937 rng(5);
  for (int rep = 0; rep < 400; ++rep) {
    const int64_t r = 2 * static_cast<int64_t>(rng() % 33), nope = 1 + static_cast<int64_t>(rng() % 300), d = nope + r;
    std::vector<float> x(d);
    std::normal_distribution<float> g(0.0f, 3.0f);
    for (int64_t b = 0; b < nope; b += 64)
      fill_fp8(x, b, std::min<int64_t>(64, nope - b), static_cast<Fill>(rng() % 5), rng);
    for (int64_t i = nope; i < d; ++i) x[i] = g(rng);
    std::vector<uint8_t> row(quant::kv_row_bytes(d, r), 0xAA);
    std::vector<float> dq(d), back(d), want = x;
    quant::kv_row_encode(x.data(), d, r, row.data(), dq.data());
    reference::Rounder().kv_row(want.data(), d, r, std::vector<float>(d, 1.0f).data());
    quant::kv_row_decode(row.data(), d, r, back.data());
    std::vector<float> scalar(d);  // the AVX-512F widening, where this CPU runs it, gives the scalar bits
    quant::kv_row_decode_scalar(row.data(), d, r, scalar.data());
    ASSERT_EQ(std::memcmp(scalar.data(), back.data(), d * sizeof(float)), 0) << "rep " << rep << " d=" << d;
    for (int64_t i = 0; i < d; ++i) {
      ASSERT_EQ(dq[i], want[i]) << "rep " << rep << " d=" << d << " r=" << r << " i=" << i << " x=" << x[i];
      ASSERT_EQ(back[i], dq[i]) << i;
    }
    // Layout: codes, then bf16 RoPE dims, then one scale byte per block, then zero padding.
    for (int64_t b = 0, k = 0; b < nope; b += 64, ++k) {
      const float s = std::ldexp(1.0f, row[nope + 2 * r + k] - 127);
      for (int64_t i = b; i < std::min(nope, b + 64); ++i) ASSERT_EQ(e4m3fn_to_f32(row[i]) * s, dq[i]) << i;
    }
    for (int64_t i = 0; i < r; ++i) {
      uint16_t h;
      std::memcpy(&h, &row[nope + 2 * i], 2);
      ASSERT_EQ(bf16_to_f32(h), dq[nope + i]) << i;
    }
    for (size_t i = static_cast<size_t>(nope + 2 * r + (nope + 63) / 64); i < row.size(); ++i)
      ASSERT_EQ(row[i], 0) << i;
  }
}

// A block holds its own scale: one outlier coarsens its 64 values and no others.
TEST(QuantRows, AnOutlierCoarsensOnlyItsOwnBlock) {
  std::vector<float> x(192, 0.001f);
  x[70] = 1000.0f;
  std::vector<uint8_t> row(quant::kv_row_bytes(192, 0));
  std::vector<float> dq(192);
  quant::kv_row_encode(x.data(), 192, 0, row.data(), dq.data());
  EXPECT_EQ(row[192 + 0], 127 - 18);  // 0.001/448 -> 2^-18
  EXPECT_EQ(row[192 + 1], 127 + 2);   // 1000/448 -> 2^2
  EXPECT_EQ(row[192 + 2], 127 - 18);
  EXPECT_NEAR(dq[0], 0.001f, 0.001f / 16);
  EXPECT_EQ(dq[191], dq[0]);
  EXPECT_EQ(dq[64], 0.0f);  // 0.001/4 is below half the smallest subnormal code 2^-9
  EXPECT_EQ(dq[70], 1024.0f);
}

TEST(QuantRows, IndexRowsEqualTheReference) {
  std::mt19937 rng(6);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int rep = 0; rep < 400; ++rep) {
    const int64_t n = int64_t{1} << (rng() % 8);  // 1 .. 128
    std::vector<float> x(n);
    const int kind = static_cast<int>(rng() % 4);
    const float s = std::ldexp(1.0f, static_cast<int>(rng() % 20) - 10);
    for (float& v : x) {
      const int c = static_cast<int>(rng() % 7);
      v = kind == 0   ? 0.0f
          : kind == 1 ? static_cast<float>((kE2m1[c] + kE2m1[c + 1]) / 2) * s
          : kind == 2 ? 1e-39f * g(rng)
                      : g(rng);
      if (rng() % 2) v = -v;
    }
    if (kind == 1)
      for (int64_t b = 0; b < n; b += 32) x[b] = 5.0f * s;  // each block's scale is s
    // The row codec alone (ties survive only without the rotation) ...
    std::vector<uint8_t> row(quant::index_row_bytes(n));
    std::vector<float> dq(n), back(n), want = x;
    quant::index_row_encode(x.data(), n, row.data(), dq.data());
    reference::Rounder ref;
    for (int64_t b = 0; b < n; b += 32) ref.fp4_block(want.data() + b, std::min<int64_t>(32, n - b));
    quant::index_row_decode(row.data(), n, back.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(dq[i], want[i]) << "rep " << rep << " n=" << n << " i=" << i << " x=" << x[i];
      ASSERT_EQ(back[i], dq[i]);
    }
    // ... and with the Hadamard first, as keys and queries are rounded.
    std::vector<float> h = x, hw = x;
    quant::hadamard(h.data(), n);
    quant::fp4_qdq(h.data(), n);
    reference::Rounder().index_vec(hw.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(h[i], hw[i]) << "rep " << rep << " i=" << i;
  }
}

}  // namespace
}  // namespace dsv4
