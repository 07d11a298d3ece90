// The integer FP4 indexer kernel (ops/fp4_dot.h): every block sum, scaled by
// the two block scales, equals the float64 dot product of the dequantised
// query and key blocks exactly; a head's dot product over all blocks is that
// of float64 rounded once; the scores of the AVX2 and AVX-512 VNNI kernels
// (D_I = 128; the latter where the CPU has it) and of the scalar kernel all
// equal the documented combination of those exact dot products bit for bit,
// also where block exponents differ so much that the SIMD kernels hand keys to
// the scalar one or the per-block form is used.
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
// spread(w): block 1 of key w scaled by 2^spread(w) after the rotation (0: as rotated).
void keys(std::mt19937& rng, int64_t n, int64_t dim, std::vector<uint8_t>& packed, std::vector<float>& dq,
          int (*spread)(int64_t) = nullptr) {
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
    for (int64_t i = 32; spread && i < std::min<int64_t>(dim, 64); ++i) x[i] = std::ldexp(x[i], spread(w));
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

// Head h against key w in float64 (exact: few significant bits, moderate exponents).
double dot64(const std::vector<float>& q, const std::vector<float>& k, int64_t dim, int64_t h, int64_t w, int64_t b0,
             int64_t b1) {
  double e = 0;
  for (int64_t i = b0 * 32; i < std::min(dim, b1 * 32); ++i) e += static_cast<double>(q[h * dim + i]) * k[w * dim + i];
  return e;
}

// The documented scores (ops/fp4_dot.h) from float64 dot products of the dequantised values.
float expected(const fp4dot::Query& enc, const std::vector<float>& q, const std::vector<float>& k,
               const uint8_t* scales, const std::vector<float>& a, int64_t w) {
  const int64_t dim = enc.dim, blocks = enc.blocks;
  const auto [lo, hi] = std::minmax_element(scales, scales + blocks);
  const bool exact = enc.max_shift + (*hi - *lo) <= fp4dot::kExactSpread;
  const float smallest = fp4dot::key_scale(*lo);
  float lanes[8] = {};  // head h into lane {0 1 4 5 2 3 6 7}[h % 8] by fused multiply-adds, then pairwise
  for (int64_t h = 0; h < enc.heads; ++h) {
    float& lane = lanes[std::array<int, 8>{0, 1, 4, 5, 2, 3, 6, 7}[h % 8]];
    if (exact) {  // T: an integer, to fp32 once
      const double t = dot64(q, k, dim, h, w, 0, blocks) / (static_cast<double>(enc.base[h]) * smallest);
      EXPECT_EQ(t, std::floor(t)) << "head " << h << " key " << w;
      lane = std::fma(a[h] * enc.base[h], std::max(static_cast<float>(t), 0.0f), lane);
      continue;
    }
    auto block = [&](int64_t b) { return static_cast<float>(dot64(q, k, dim, h, w, b, b + 1)); };  // exact in fp32
    float dot = blocks > 1 ? block(0) + block(1) : block(0);  // (b0 + b1) + (b2 + b3) + ...
    for (int64_t b = 2; b < blocks; b += 2) dot += b + 1 < blocks ? block(b) + block(b + 1) : block(b);
    lane = std::fma(a[h], std::max(dot, 0.0f), lane);
  }
  const float s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  return exact ? s * smallest : s;
}

// Every kernel's scores for one query against keys, compared with expected().
void check_kernels(const std::vector<float>& q, const std::vector<uint8_t>& packed, const std::vector<float>& dq,
                   int64_t heads, int64_t dim, int64_t n, std::mt19937& rng, const char* what) {
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
  const bool avx512 = fp4dot::avx512_vnni() && fp4dot::scores_avx512(enc, a.data(), packed.data(), rb, n, wide.data());
  if (fp4dot::avx512_vnni()) {
    EXPECT_EQ(avx512, dim == 128 && enc.max_shift <= fp4dot::kFoldShift) << what;
  }
#ifdef __AVX2__
  EXPECT_EQ(avx2, dim == 128) << "the AVX2 kernel takes D_I = 128 with a multiple of 8 heads";
#else
  EXPECT_FALSE(avx2);
#endif
  for (int64_t w = 0; w < n; ++w) {
    const float expect = expected(enc, q, dq, &packed[w * rb + (dim + 1) / 2], a, w);
    ASSERT_EQ(scalar[w], expect) << what << ": dim " << dim << " heads " << heads << " key " << w;
    ASSERT_EQ(s[w], expect) << what << ": dim " << dim << " heads " << heads << " key " << w;
    if (avx2) {
      ASSERT_EQ(simd[w], expect) << "AVX2, " << what << ": dim " << dim << " heads " << heads << " key " << w;
    }
    if (avx512) {
      ASSERT_EQ(wide[w], expect) << "AVX-512, " << what << ": dim " << dim << " heads " << heads << " key " << w;
    }
  }
}

TEST(Fp4Dot, ScoresAreTheFixedCombinationOfExactDots) {
  std::mt19937 rng(7);
  // 128: the SIMD kernels (64 heads: pairs of heads per partial sum; 24: a
  // single head left in each; 300 keys: a last tile of 12 keys (16 or 32 a
  // pass); 8 heads: one per partial sum); 16 and 256: scalar only.
  for (const auto& [dim, heads] : {std::pair<int64_t, int64_t>{16, 64}, {256, 8}, {128, 64}, {128, 24}, {128, 8}}) {
    const int64_t n = 300;
    std::vector<uint8_t> packed;
    std::vector<float> dq;
    keys(rng, n, dim, packed, dq);
    const std::vector<float> q = queries(rng, heads, dim);
    fp4dot::Query enc;
    fp4dot::encode_query(q.data(), heads, dim, enc);
    EXPECT_LE(enc.max_shift, fp4dot::kFoldShift) << "rotated queries: the AVX-512 kernel's folded form";
    check_kernels(q, packed, dq, heads, dim, n, rng, "rotated");
  }
}

TEST(Fp4Dot, ExponentSpreadsPastEachKernelsLimits) {
  std::mt19937 rng(11);
  const int64_t dim = 128, heads = 16, n = 96;
  // Keys in tiles of 32 with block 1 raised by: 0, 9 (SIMD), 14-15 (past the
  // 32-bit sums with a query shift of 2 or more: the scalar kernel), 30 (the
  // 64-bit sums), 45 (the per-block form); an all-zero block 3 (scale 2^-126) in a few.
  std::vector<uint8_t> packed;
  std::vector<float> dq;
  keys(rng, n, dim, packed, dq, [](int64_t w) { return std::array<int, 6>{0, 9, 14, 15, 30, 45}[(w / 16) % 6]; });
  const size_t rb = quant::index_row_bytes(dim);
  for (int64_t w = 5; w < n; w += 37) {  // zero block 3: codes and float values
    std::fill_n(&packed[w * rb + 48], 16, uint8_t{0});
    packed[w * rb + 67] = 1;
    std::fill_n(&dq[w * dim + 96], 32, 0.0f);
  }
  // Queries with block 2 of every head raised by 0 (AVX-512), 2, 5 (AVX2), 20, 50; one head's block 0 zero.
  for (int shift : {0, 2, 5, 20, 50}) {
    std::vector<float> q = queries(rng, heads, dim);
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 64; i < 96; ++i) q[h * dim + i] = std::ldexp(q[h * dim + i], shift);
    std::fill_n(&q[3 * dim], 32, 0.0f);
    check_kernels(q, packed, dq, heads, dim, n, rng, ("query shift " + std::to_string(shift)).c_str());
  }
}

TEST(Fp4Dot, OneHeadsScoreIsItsFloat64DotRoundedOnce) {
  std::mt19937 rng(3);
  const int64_t dim = 128, heads = 8, n = 64;
  std::vector<uint8_t> packed;
  std::vector<float> dq;
  keys(rng, n, dim, packed, dq, [](int64_t w) { return static_cast<int>(w % 24); });
  const std::vector<float> q = queries(rng, heads, dim);
  fp4dot::Query enc;
  fp4dot::encode_query(q.data(), heads, dim, enc);
  const size_t rb = quant::index_row_bytes(dim);
  int64_t inexact = 0;
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<float> a(heads, 0.0f), s(n);
    a[h] = 1.0f;
    fp4dot::scores(enc, a.data(), packed.data(), rb, n, s.data());
    for (int64_t w = 0; w < n; ++w) {
      const double exact = dot64(q, dq, dim, h, w, 0, 4);
      ASSERT_EQ(s[w], static_cast<float>(std::max(exact, 0.0))) << "head " << h << " key " << w;
      inexact += static_cast<double>(static_cast<float>(exact)) != exact;
    }
  }
  EXPECT_GT(inexact, 0) << "some dots need the rounding (not a test of short sums)";
}

}  // namespace
}  // namespace dsv4
