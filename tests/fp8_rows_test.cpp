// The FP8 row kernels' exactness at the edges: the fp16-pattern widening of
// stored rows (ops/weight_decode.h) equals the dequantised weight for every
// finite code at scales from fp32's subnormal products to 2^100, and the
// row-invariant GEMM at scales that force its widening fallback equals the
// same GEMM over the widened fp32 rows (native_weights_test covers the
// pre-scaled path, ragged shapes and row counts).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "dsv4/random.h"
#include "ops/blas.h"
#include "ops/weight_decode.h"

namespace dsv4 {
namespace {

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
