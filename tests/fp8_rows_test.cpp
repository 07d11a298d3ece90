// The FP8 row kernels' exactness: the AVX-512 kernel (ops/fp8_rows.h) equals
// its scalar definition (8-lane accumulators, one fused multiply-add per
// weight in ascending column order) bit for bit on every E4M3 code, and the
// fp16-pattern widening of stored rows (ops/weight_decode.h) equals the
// dequantised weight for every finite code and several scales, extreme powers
// of two included. The row-invariant GEMM over all of this (pre-scaling, its
// fallbacks, ragged shapes) against widened fp32 rows is native_weights_test's.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/dtype.h"
#include "dsv4/random.h"
#include "ops/blas.h"
#include "ops/fp8_rows.h"
#include "ops/weight_decode.h"

namespace dsv4 {
namespace {

// acc += the lanes of x[r]·v(rows[j]) over [i0, i1), as fp8_rows.h defines them.
void lanes_scalar(int m, const float* const* x, const uint8_t* const* rows, int64_t i0, int64_t i1, float* acc,
                  int64_t ld) {
  for (int r = 0; r < m; ++r)
    for (int j = 0; j < fp8rows::kRows; ++j)
      for (int64_t i = i0; i < i1; ++i) {
        float& a = acc[8 * (r * ld + j) + i % 8];
        a = std::fma(x[r][i], e4m3_times_2pow_m120(rows[j][i]), a);
      }
}

TEST(Fp8Rows, Avx512KernelEqualsTheLaneDefinitionOnEveryCode) {
  if (!fp8rows::avx512()) GTEST_SKIP() << "the AVX-512 kernel is not built or this CPU lacks AVX-512 F";
  std::mt19937 rng(23);
  const int64_t k = 256 + 64 + 40;  // every code in each row, then random ones; not a multiple of 64
  std::vector<uint8_t> codes(size_t(2 * fp8rows::kRows * k));
  for (size_t i = 0; i < codes.size(); ++i)
    codes[i] = static_cast<uint8_t>(i % k < 256 ? (i % k + 37 * (i / k)) : rng());
  const uint8_t* rows[fp8rows::kRows];
  const uint8_t* next[fp8rows::kRows];
  for (int j = 0; j < fp8rows::kRows; ++j) rows[j] = &codes[size_t(j * k)], next[j] = &codes[size_t((8 + j) * k)];
  // Pre-scaled activations as row_invariant.cpp makes them: x·2^120·scale, any size; zeros, signs.
  std::vector<float> xs(size_t(2 * k));
  std::uniform_real_distribution<float> e(-60.0f, 60.0f), u(-1.0f, 1.0f);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = i % 29 == 0 ? 0.0f : u(rng) * std::exp2(e(rng));
  const float* x[2] = {xs.data(), xs.data() + k};
  for (int m : {1, 2})
    for (auto [i0, i1] : {std::pair<int64_t, int64_t>{0, k}, {8, 136}, {64, k - 8}}) {
      SCOPED_TRACE("m " + std::to_string(m) + " columns " + std::to_string(i0) + ".." + std::to_string(i1));
      const int64_t ld = fp8rows::kRows + 3;  // accumulators of more rows than the call's
      std::vector<float> got(size_t(8 * m * ld)), want(got.size());
      for (float& a : got) a = u(rng);
      want = got;
      ASSERT_TRUE(fp8rows::micro(m, x, rows, m == 1 ? next : nullptr, i0, i1, got.data(), ld));
      lanes_scalar(m, x, rows, i0, i1, want.data(), ld);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "accumulator " << i;
    }
  EXPECT_FALSE(fp8rows::micro(3, x, rows, nullptr, 0, k, std::vector<float>(8 * 3 * 8).data(), 8));
}

// Stored rows widened through the fp16 pattern: every finite code at scales
// from 2^-140 (products in fp32's subnormals) to 2^100, and an fp32 scale.
TEST(Fp8Rows, Fp16WideningEqualsTheDequantisedWeightForEveryCode) {
  std::vector<uint8_t> codes(256);
  for (int i = 0; i < 256; ++i) codes[size_t(i)] = static_cast<uint8_t>((i & 0x7F) == 0x7F ? 0x80 : i);  // no NaN
  for (float s : {0x1p-140f, 0x1p-20f, 0.0078125f, 1.0f, 0x1p6f, 0x1p100f, 3.0e-3f}) {
    SCOPED_TRACE("scale " + std::to_string(s));
    const float scales[2] = {s, s};
    const vec::Fp8Row row{codes.data(), scales};
    for (int i = 0; i < 256; ++i) {
      const float want = e4m3fn_to_f32(codes[size_t(i)]) * s;  // one rounding of the exact product
      ASSERT_EQ(row.at(i), want) << "code " << i;
#ifdef DSV4_AVX2
      if (i % 8 == 0) {
        float lanes[8];
        _mm256_storeu_ps(lanes, row.load8(i));
        for (int l = 0; l < 8; ++l) ASSERT_EQ(lanes[l], e4m3fn_to_f32(codes[size_t(i + l)]) * s) << "code " << i + l;
      }
#endif
    }
  }
}

// The row-invariant GEMM at scales whose 2^120·scale leaves the range the
// pre-scaled path accepts (2^6 and up: the widened fallback) or is tiny, with
// 8-row groups, a tail of rows and of columns, m = 1..3, against widened rows.
TEST(Fp8Rows, RowKernelAtExtremeScalesEqualsWidenedWeights) {
  std::mt19937 rng(31);
  const int64_t n = 150, k = 203, kb = (k + 127) / 128;
  std::vector<uint8_t> codes(size_t(n * k));
  for (auto& c : codes) {
    c = static_cast<uint8_t>(rng() & 0xFF);
    if ((c & 0x7F) == 0x7F) c = 0;  // no NaN codes (the loader refuses them)
  }
  for (float s : {0x1p6f, 0x1p40f, 0x1p-100f, 0x1p-3f}) {
    SCOPED_TRACE("scale " + std::to_string(s));
    std::vector<float> scales(size_t(2 * kb), s);
    scales[1] = s * 0.5f;  // a different scale in the second column block
    WeightRows fp8;
    fp8.dtype = DType::F8_E4M3, fp8.data = codes.data(), fp8.ld = k;
    fp8.scale = scales.data(), fp8.scale_ld = kb;
    std::vector<float> wide(size_t(n * k));
    widen_rows(fp8, n, k, wide.data());
    for (int64_t i = 0; i < n * k; ++i)
      ASSERT_EQ(wide[size_t(i)], e4m3fn_to_f32(codes[size_t(i)]) * scales[size_t((i / k / 128) * kb + i % k / 128)]);
    for (int64_t m : {1, 2, 3}) {
      const Tensor x = random_uniform({m, k}, 1.0f, 40 + static_cast<uint64_t>(m));
      std::vector<float> got(size_t(m * n)), want(got.size());
      gemm_nt_rows_w(m, n, k, x.ptr(), k, fp8, got.data(), n);
      gemm_nt_rows(m, n, k, x.ptr(), k, wide.data(), k, want.data(), n);
      ASSERT_EQ(got, want) << "m " << m;
    }
  }
}

}  // namespace
}  // namespace dsv4
