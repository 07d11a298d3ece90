// The integer FP4 indexer kernel (ops/fp4_dot.h): every block sum, scaled by
// the two block scales, equals the float64 dot product of the dequantised
// query and key blocks exactly; the scores of the AVX2 and AVX-512 VNNI
// kernels (D_I = 128; the latter where the CPU has it) and of the scalar
// kernel all equal the documented combination of those exact block products
// bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "ops/fp4_dot.h"
#include "ops/quant.h"

namespace dsv4 {
namespace {

// n FP4 rows of width dim as the state stores them (rotated, packed), and dequantised.
void keys(std::mt19937& rng, int64_t n, int64_t dim, std::vector<uint8_t>& packed, std::vector<float>& dq) {
  const size_t rb = quant::index_row_bytes(dim);
  packed.assign(n * rb, 0);
  dq.resize(static_cast<size_t>(n * dim));
  std::normal_distribution<float> v(0.0f, 1.0f);
  std::uniform_real_distribution<float> mag(-6.0f, 3.0f);
  std::vector<float> x(static_cast<size_t>(dim));
  for (int64_t w = 0; w < n; ++w) {
    const float s = std::exp2(mag(rng));  // rows of very different sizes, so the block scales differ
    for (float& e : x) e = v(rng) * s;
    if (w % 7 == 3) std::fill(x.begin(), x.begin() + std::min<int64_t>(dim, 32), 0.0f);  // an all-zero block
    quant::hadamard(x.data(), dim);
    quant::index_row_encode(x.data(), dim, &packed[w * rb], &dq[w * dim]);
  }
}

// Queries as round_index_queries leaves them: rotated, then FP4-rounded in place.
std::vector<float> queries(std::mt19937& rng, int64_t heads, int64_t dim) {
  std::vector<float> q(static_cast<size_t>(heads * dim));
  std::normal_distribution<float> v(0.0f, 2.0f);
  for (float& e : q) e = v(rng);
  for (int64_t h = 0; h < heads; ++h) {
    quant::hadamard(&q[h * dim], dim);
    quant::fp4_qdq(&q[h * dim], dim);
  }
  return q;
}

TEST(Fp4Dot, BlockSumsEqualFloat64DotsOfDequantisedValues) {
  std::mt19937 rng(2026);
  for (int64_t dim : {8, 16, 64, 128, 256}) {
    const int64_t heads = 6, n = 40, blocks = (dim + 31) / 32;
    std::vector<uint8_t> packed;
    std::vector<float> dq;
    keys(rng, n, dim, packed, dq);
    const std::vector<float> q = queries(rng, heads, dim);
    fp4dot::Query enc;
    fp4dot::encode_query(q.data(), heads, dim, enc);
    const size_t rb = quant::index_row_bytes(dim);
    int64_t checked = 0;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t w = 0; w < n; ++w) {
        std::vector<int32_t> sums(static_cast<size_t>(blocks));
        fp4dot::block_sums(enc, h, &packed[w * rb], sums.data());
        for (int64_t b = 0; b < blocks; ++b) {
          double exact = 0;
          for (int64_t i = b * 32; i < std::min(dim, b * 32 + 32); ++i)
            exact += static_cast<double>(q[h * dim + i]) * static_cast<double>(dq[w * dim + i]);
          const double scaled = static_cast<double>(sums[b]) * enc.scale[h * blocks + b] *
                                fp4dot::key_scale(packed[w * rb + (dim + 1) / 2 + b]);
          ASSERT_EQ(scaled, exact) << "dim " << dim << " head " << h << " key " << w << " block " << b;
          checked += exact != 0;
        }
      }
    EXPECT_GT(checked, heads * n * blocks / 2);  // not a test of zeros
  }
}

TEST(Fp4Dot, ScoresAreTheFixedCombinationOfExactBlocks) {
  std::mt19937 rng(7);
  // 128: the SIMD kernels (64 heads: pairs of heads per partial sum; 24: a
  // single head left in each; 300 keys: a last tile of 12 keys (16 or 32 a
  // pass); 8 heads: one per partial sum); 16: scalar only.
  for (const auto& [dim, heads] : {std::pair<int64_t, int64_t>{16, 64}, {128, 64}, {128, 24}, {128, 8}}) {
    const int64_t n = 300, blocks = (dim + 31) / 32;
    std::vector<uint8_t> packed;
    std::vector<float> dq;
    keys(rng, n, dim, packed, dq);
    const std::vector<float> q = queries(rng, heads, dim);
    std::vector<float> a(static_cast<size_t>(heads));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& e : a) e = u(rng);
    fp4dot::Query enc;
    fp4dot::encode_query(q.data(), heads, dim, enc);
    const size_t rb = quant::index_row_bytes(dim);
    std::vector<float> s(n), scalar(n), simd(n), wide(n);
    fp4dot::scores(enc, a.data(), packed.data(), rb, n, s.data());
    fp4dot::scores_scalar(enc, a.data(), packed.data(), rb, n, scalar.data());
    const bool avx2 = fp4dot::scores_avx2(enc, a.data(), packed.data(), rb, n, simd.data());
    // Where the CPU has AVX-512 VNNI (else that kernel is not run here).
    const bool avx512 =
        fp4dot::avx512_vnni() && fp4dot::scores_avx512(enc, a.data(), packed.data(), rb, n, wide.data());
    if (fp4dot::avx512_vnni()) {
      EXPECT_EQ(avx512, dim == 128);
    }
#ifdef __AVX2__
    EXPECT_EQ(avx2, dim == 128) << "the AVX2 kernel takes D_I = 128 with a multiple of 8 heads";
#else
    EXPECT_FALSE(avx2);
#endif
    for (int64_t w = 0; w < n; ++w) {
      float lanes[8] = {};  // head h into lane {0 1 4 5 2 3 6 7}[h % 8] by fused multiply-adds, then pairwise
      for (int64_t h = 0; h < heads; ++h) {
        auto block = [&](int64_t k) {  // exact in fp32
          double e = 0;
          for (int64_t i = k * 32; i < std::min(dim, k * 32 + 32); ++i)
            e += static_cast<double>(q[h * dim + i]) * dq[w * dim + i];
          return static_cast<float>(e);
        };
        float dot = blocks > 1 ? block(0) + block(1) : block(0);  // (b0 + b1) + (b2 + b3) + ...
        for (int64_t b = 2; b < blocks; b += 2) dot += b + 1 < blocks ? block(b) + block(b + 1) : block(b);
        float& lane = lanes[std::array<int, 8>{0, 1, 4, 5, 2, 3, 6, 7}[h % 8]];
        lane = std::fma(a[h], std::max(dot, 0.0f), lane);
      }
      const float expect =
          ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
      ASSERT_EQ(scalar[w], expect) << "dim " << dim << " heads " << heads << " key " << w;
      ASSERT_EQ(s[w], expect) << "dim " << dim << " heads " << heads << " key " << w;
      if (avx2) {
        ASSERT_EQ(simd[w], expect) << "AVX2, dim " << dim << " heads " << heads << " key " << w;
      }
      if (avx512) {
        ASSERT_EQ(wide[w], expect) << "AVX-512, dim " << dim << " heads " << heads << " key " << w;
      }
    }
  }
}

}  // namespace
}  // namespace dsv4
