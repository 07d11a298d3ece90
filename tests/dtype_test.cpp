// Float dtype decoders/encoders against independent ldexp formulas, and
// SafeTensors::f32 on every float dtype (unaligned data included).
#include "common/dtype.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "dsv4/error.h"
#include "dsv4/safetensors.h"

namespace dsv4 {
namespace {

// Sign, exponent field e, mantissa field m of a binary float with `mbits`
// mantissa bits and exponent bias `bias`; e == 0 is subnormal.
double formula(bool neg, int e, int m, int mbits, int bias) {
  const double frac = double(m) / double(1 << mbits);
  const double v = e == 0 ? std::ldexp(frac, 1 - bias) : std::ldexp(1.0 + frac, e - bias);
  return neg ? -v : v;
}

// Exact equality that also accepts NaN == NaN and tells -0 from +0.
void expect_same(float got, double want, unsigned bits) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << "pattern 0x" << std::hex << bits;
    return;
  }
  EXPECT_EQ(double(got), want) << "pattern 0x" << std::hex << bits;
  EXPECT_EQ(std::signbit(got), std::signbit(want)) << "pattern 0x" << std::hex << bits;
}

TEST(Dtype, E4m3fnAll256Patterns) {
  for (unsigned b = 0; b < 256; ++b) {
    const bool neg = b & 0x80;
    const int e = (b >> 3) & 0xf, m = b & 7;
    const double want = (e == 15 && m == 7) ? std::nan("") : formula(neg, e, m, 3, 7);
    expect_same(e4m3fn_to_f32(uint8_t(b)), want, b);
  }
}

TEST(Dtype, E4m3fnEdgeValues) {
  EXPECT_EQ(e4m3fn_to_f32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3fn_to_f32(0x80)));            // -0
  EXPECT_EQ(e4m3fn_to_f32(0x01), std::ldexp(1.0f, -9));      // smallest subnormal
  EXPECT_EQ(e4m3fn_to_f32(0x07), 7 * std::ldexp(1.0f, -9));  // largest subnormal
  EXPECT_EQ(e4m3fn_to_f32(0x08), std::ldexp(1.0f, -6));      // smallest normal
  EXPECT_EQ(e4m3fn_to_f32(0x38), 1.0f);
  EXPECT_EQ(e4m3fn_to_f32(0x7e), 448.0f);  // max: S.1111.110
  EXPECT_EQ(e4m3fn_to_f32(0xfe), -448.0f);
  EXPECT_EQ(e4m3fn_to_f32(0x78), 256.0f);  // exponent 15 is finite (no infinities)
  EXPECT_TRUE(std::isnan(e4m3fn_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3fn_to_f32(0xff)));
}

TEST(Dtype, E4m3fnEncoder) {
  for (unsigned b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;
    EXPECT_EQ(f32_to_e4m3fn(e4m3fn_to_f32(uint8_t(b))), b) << "round trip of 0x" << std::hex << b;
  }
  EXPECT_EQ(f32_to_e4m3fn(1.0625f), 0x38);               // halfway 1 and 1.125: to even mantissa
  EXPECT_EQ(f32_to_e4m3fn(1.1875f), 0x3a);               // halfway 1.125 and 1.25: to even
  EXPECT_EQ(f32_to_e4m3fn(std::ldexp(1.5f, -9)), 0x02);  // subnormal tie to even
  EXPECT_EQ(f32_to_e4m3fn(std::ldexp(0.5f, -9)), 0x00);
  EXPECT_EQ(f32_to_e4m3fn(std::ldexp(7.5f, -9)), 0x08);  // rounds up into the normals
  EXPECT_EQ(f32_to_e4m3fn(1e6f), 0x7e);                  // saturates
  EXPECT_EQ(f32_to_e4m3fn(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(f32_to_e4m3fn(std::nanf("")), 0x7f);
}

// The encoder against its definition (the nearest of the 127 finite
// magnitudes, ties to the even code, saturating at 448, the sign kept) at the
// floats around every midpoint between neighbouring codes and a stride through
// all 2^32 bit patterns.
TEST(Dtype, E4m3fnEncoderIsNearestEven) {
  std::vector<double> mags;
  for (int c = 0; c < 0x7f; ++c) mags.push_back(e4m3fn_to_f32(uint8_t(c)));
  const auto want = [&](float x) -> int {
    const int sign = std::signbit(x) ? 0x80 : 0;
    if (std::isnan(x)) return sign | 0x7f;
    const double a = std::fabs(double(x));
    if (a >= 448.0) return sign | 0x7e;
    int best = 0;
    for (int c = 1; c < 0x7f; ++c) {
      const double d = std::fabs(mags[size_t(c)] - a), db = std::fabs(mags[size_t(best)] - a);
      if (d < db || (d == db && (c & 1) == 0)) best = c;
    }
    return sign | best;
  };
  std::vector<float> xs;
  for (int c = 0; c + 1 < 0x7f; ++c) {
    float mid = float((mags[size_t(c)] + mags[size_t(c + 1)]) / 2);  // exact in fp32
    for (int k = 0; k < 3; ++k) mid = std::nextafter(mid, 0.0f);
    for (int k = 0; k < 7; ++k, mid = std::nextafter(mid, 1e9f)) xs.push_back(mid), xs.push_back(-mid);
  }
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 65521) xs.push_back(std::bit_cast<float>(uint32_t(u)));
  for (float x : {448.0f, 463.9f, 464.0f, 1e30f, INFINITY, -INFINITY, 0.0f, -0.0f, 0x1p-149f}) xs.push_back(x);
  for (float x : xs) ASSERT_EQ(int(f32_to_e4m3fn(x)), want(x)) << "x = " << x << " bits " << std::bit_cast<uint32_t>(x);
}

TEST(Dtype, Bf16AllPatterns) {
  for (unsigned b = 0; b < 65536; ++b) {
    const int e = (b >> 7) & 0xff, m = b & 0x7f;
    const double want =
        e == 255 ? (m ? std::nan("") : (b & 0x8000 ? -1.0 : 1.0) * INFINITY) : formula(b & 0x8000, e, m, 7, 127);
    expect_same(bf16_to_f32(uint16_t(b)), want, b);
  }
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_EQ(bf16_to_f32(0xff80), -INFINITY);
}

TEST(Dtype, Bf16Encoder) {
  const auto enc = [](uint32_t bits) { return f32_to_bf16(std::bit_cast<float>(bits)); };
  EXPECT_EQ(enc(0x3f808000), 0x3f80);                     // tie: to even
  EXPECT_EQ(enc(0x3f818000), 0x3f82);                     // tie: to even (up)
  EXPECT_EQ(enc(0x3f808001), 0x3f81);                     // above half: up
  EXPECT_EQ(enc(0x7f7fffff), 0x7f80);                     // FLT_MAX rounds to inf
  EXPECT_EQ(enc(0xff800000), 0xff80);                     // -inf
  EXPECT_TRUE(std::isnan(bf16_to_f32(enc(0x7f800001))));  // a NaN whose payload is all in the low bits
  for (unsigned b = 0; b < 65536; ++b) {
    if (std::isnan(bf16_to_f32(uint16_t(b)))) continue;
    EXPECT_EQ(f32_to_bf16(bf16_to_f32(uint16_t(b))), b);
  }
}

TEST(Dtype, F16AllPatterns) {
  for (unsigned h = 0; h < 65536; ++h) {
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    const double want =
        e == 31 ? (m ? std::nan("") : (h & 0x8000 ? -1.0 : 1.0) * INFINITY) : formula(h & 0x8000, e, m, 10, 15);
    expect_same(f16_to_f32(uint16_t(h)), want, h);
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);               // max
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03ff), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  EXPECT_EQ(f16_to_f32(0x7c00), INFINITY);
  EXPECT_EQ(f16_to_f32(0xfc00), -INFINITY);
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0xfc01)));
}

TEST(Dtype, E8m0) {
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(e8m0_to_f32(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(e8m0_to_f32(255)));
}

TEST(Dtype, NamesSizesAndKinds) {
  const std::pair<DType, std::string_view> all[] = {{DType::F32, "F32"},         {DType::I64, "I64"},
                                                    {DType::BF16, "BF16"},       {DType::F16, "F16"},
                                                    {DType::F8_E4M3, "F8_E4M3"}, {DType::F8_E8M0, "F8_E8M0"}};
  for (const auto& [t, name] : all) {
    EXPECT_EQ(dtype_name(t), name);
    EXPECT_EQ(is_float_dtype(t), t != DType::I64);
  }
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::F8_E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::F8_E8M0), 1u);
}

// Every float dtype through the reader; the 1-byte tensor first puts the
// others at odd offsets.
TEST(Dtype, SafeTensorsF32ConvertsEveryFloatDtype) {
  const auto raw = [](std::initializer_list<uint8_t> b) {
    std::vector<std::byte> v;
    for (uint8_t x : b) v.push_back(std::byte(x));
    return v;
  };
  const std::string path = ::testing::TempDir() + "/dsv4_dtype_all.safetensors";
  write_safetensors(path, {{"e4m3", DType::F8_E4M3, {3}, raw({0x38, 0x7e, 0x81})},
                           {"bf16", DType::BF16, {2}, raw({0x80, 0x3f, 0x00, 0xc0})},
                           {"f16", DType::F16, {2}, raw({0x00, 0x3c, 0x01, 0x00})},
                           {"e8m0", DType::F8_E8M0, {1}, raw({128})},
                           {"f32", DType::F32, {1}, raw({0x00, 0x00, 0x80, 0x3f})},
                           {"i64", DType::I64, {1}, raw({1, 0, 0, 0, 0, 0, 0, 0})}});
  const SafeTensors st = SafeTensors::open(path);
  EXPECT_EQ(st.info("bf16").dtype, DType::BF16);
  EXPECT_EQ(st.f32("e4m3").data, (std::vector<float>{1.0f, 448.0f, -std::ldexp(1.0f, -9)}));
  EXPECT_EQ(st.f32("bf16").data, (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(st.f32("f16").data, (std::vector<float>{1.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(st.f32("e8m0").data, (std::vector<float>{2.0f}));
  EXPECT_EQ(st.f32("f32").data, (std::vector<float>{1.0f}));
  try {
    st.f32("i64");
    ADD_FAILURE() << "I64 read as f32";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr(path));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("tensor 'i64': dtype is I64, expected F32, BF16, F16 or F8_*"));
  }
}

TEST(Dtype, DecodeRejectsI64) {
  float out[1];
  EXPECT_THROW(decode_to_f32(DType::I64, {}, out), Error);
}

}  // namespace
}  // namespace dsv4
