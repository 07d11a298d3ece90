// The AVX2 FP4 indexer kernel (ops/fp4_dot.h) at D_I = 128. Sixteen keys per
// pass, one key per 32-bit lane: the tile's codes are transposed once (16-bit
// groups of four values, then nibbles -> unsigned bytes 2k+12 in [0, 24]
// through a 16-entry byte shuffle) and then reused by every head. For one head
// and one block, eight vpmaddubsw against the query's four signed codes 2q of
// a group broadcast to every lane (products <= 288, pairs <= 576, the block's
// lane sums <= 9216: no saturation, no overflow of int16), vpaddw, one
// vpmaddwd to int32, minus 12·Σ2q: eight keys' exact block sums with no
// horizontal reduction at all. Scales, the combination of blocks and the sum
// over heads are the scalar kernel's operations in its order (compiled with
// -ffp-contract=off, the one fused multiply-add written out).
#include <cstring>

#include "ops/fp4_dot.h"
#include "ops/fp4_tile.h"

namespace dsv4::fp4dot {

#ifndef __AVX2__
bool scores_avx2(const Query&, const float*, const uint8_t*, size_t, int64_t, float*) { return false; }
#else
namespace {

constexpr bool kPairs = true;

// f[n][j]: block b's exact products for NH heads hs[n] against the tile's halves j.
template <int NH>
void block_products(const KeyTile& t, const Query& q, const int64_t* hs, int64_t b, __m256 (&f)[NH][2]) {
  __m256i acc[NH][2] = {};
  for (int64_t g = 0; g < 8; ++g) {
    const __m256i k0 = _mm256_load_si256(&t.v[8 * b + g][0]), k1 = _mm256_load_si256(&t.v[8 * b + g][1]);
    for (int n = 0; n < NH; ++n) {
      const __m256i qg = broadcast4(&q.codes[hs[n] * kDim + 32 * b + 4 * g]);
      acc[n][0] = _mm256_add_epi16(acc[n][0], _mm256_maddubs_epi16(k0, qg));
      acc[n][1] = _mm256_add_epi16(acc[n][1], _mm256_maddubs_epi16(k1, qg));
    }
  }
  const __m256i ones = _mm256_set1_epi16(1);
  for (int n = 0; n < NH; ++n) {
    const __m256i off = _mm256_set1_epi32(q.offset[hs[n] * kBlocks + b]);
    const __m256 qs = _mm256_set1_ps(q.scale[hs[n] * kBlocks + b]);
    for (int j = 0; j < 2; ++j) {
      const __m256i sum = _mm256_sub_epi32(_mm256_madd_epi16(acc[n][j], ones), off);
      f[n][j] = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(qs, _mm256_load_ps(t.scale[b][j])));
    }
  }
}

// dot[n][j] = (f0 + f1) + (f2 + f3) for NH heads hs[n] against the tile's halves j.
template <int NH>
void head_dots(const KeyTile& t, const Query& q, const int64_t* hs, __m256 (&dot)[NH][2]) {
  __m256 f0[NH][2], f1[NH][2];
  block_products<NH>(t, q, hs, 0, f0);
  block_products<NH>(t, q, hs, 1, f1);
  for (int n = 0; n < NH; ++n)
    for (int j = 0; j < 2; ++j) dot[n][j] = _mm256_add_ps(f0[n][j], f1[n][j]);
  block_products<NH>(t, q, hs, 2, f0);
  block_products<NH>(t, q, hs, 3, f1);
  for (int n = 0; n < NH; ++n)
    for (int j = 0; j < 2; ++j) dot[n][j] = _mm256_add_ps(dot[n][j], _mm256_add_ps(f0[n][j], f1[n][j]));
}

// s[0..16) of one tile: the heads of partial sum p in head order, two at a time.
void tile_scores(const KeyTile& t, const Query& q, const float* a, float* s) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 part[8][2];
  for (int64_t c = 0; c < 8; ++c) {  // heads h = c mod 8 go to partial sum kLane[c]
    __m256 acc[2] = {zero, zero};
    auto add = [&](int64_t h, const __m256(&d)[2]) {
      for (int j = 0; j < 2; ++j) acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(a[h]), _mm256_max_ps(d[j], zero), acc[j]);
    };
    int64_t h = c;
    for (; kPairs && h + 8 < q.heads; h += 16) {
      const int64_t hs[2] = {h, h + 8};
      __m256 d[2][2] = {};
      head_dots<2>(t, q, hs, d);
      add(h, d[0]), add(h + 8, d[1]);
    }
    for (; h < q.heads; h += 8) {
      __m256 d[1][2] = {};
      head_dots<1>(t, q, &h, d);
      add(h, d[0]);
    }
    part[kLane[c]][0] = acc[0], part[kLane[c]][1] = acc[1];
  }
  __m256 r[2];
  for (int j = 0; j < 2; ++j) {
    auto p = [&](int k) { return part[k][j]; };
    r[j] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(p(0), p(1)), _mm256_add_ps(p(2), p(3))),
                         _mm256_add_ps(_mm256_add_ps(p(4), p(5)), _mm256_add_ps(p(6), p(7))));
  }
  _mm256_storeu_ps(s, _mm256_permute2f128_ps(r[0], r[1], 0x20));      // keys 0-3 | 4-7
  _mm256_storeu_ps(s + 8, _mm256_permute2f128_ps(r[0], r[1], 0x31));  // keys 8-11 | 12-15
}

}  // namespace

bool scores_avx2(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s) {
  if (q.dim != kDim || q.heads % 8 != 0) return false;
  KeyTile t;
  int64_t w = 0;
  for (; w + kTile <= n; w += kTile) {
    load_tile(keys + w * row_bytes, row_bytes, t);
    tile_scores(t, q, a, s + w);
  }
  if (w < n) {  // the last keys, zero-padded to a tile
    constexpr size_t kRow = kDim / 2 + kBlocks;
    uint8_t pad[kTile * kRow] = {};
    float out[kTile];
    for (int64_t i = 0; i < n - w; ++i) std::memcpy(pad + i * kRow, keys + (w + i) * row_bytes, kRow);
    load_tile(pad, kRow, t);
    tile_scores(t, q, a, out);
    std::memcpy(s + w, out, (n - w) * sizeof(float));
  }
  return true;
}
#endif

}  // namespace dsv4::fp4dot
