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

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace dsv4::fp4dot {

#ifndef __AVX2__
bool scores_avx2(const Query&, const float*, const uint8_t*, size_t, int64_t, float*) { return false; }
#else
namespace {

constexpr int64_t kTile = 16, kDim = 128, kGroups = kDim / 4, kBlocks = 4;

// v[g][j]: values 4g..4g+3 of keys {0-3, 8-11} (j = 0) or {4-7, 12-15} (j = 1), a key per 32-bit lane.
struct KeyTile {
  __m256i v[kGroups][2];
  alignas(32) float scale[kBlocks][2][8];  // the keys' block scales in the same lanes
};

// Key w of the tile sits in half (w / 4) % 2, lane w % 4 + 4 (w / 8).
void load_tile(const uint8_t* keys, size_t row_bytes, KeyTile& t) {
  const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,  //
                                       12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
  const __m256i low = _mm256_set1_epi8(0x0f);
  auto row = [&](int64_t w, int64_t b) { return reinterpret_cast<const __m128i*>(keys + w * row_bytes + 16 * b); };
  for (int64_t b = 0; b < kBlocks; ++b) {
    __m256i r[8], x[8];  // r[j]: block b of keys j | j + 8 (8 groups of 2 code bytes each)
    for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu2_m128i(row(j + 8, b), row(j, b));
    for (int j = 0; j < 8; j += 2)  // 8 x 8 transpose of 16-bit groups in each 128-bit lane
      x[j / 2] = _mm256_unpacklo_epi16(r[j], r[j + 1]), x[4 + j / 2] = _mm256_unpackhi_epi16(r[j], r[j + 1]);
    const __m256i y[8] = {_mm256_unpacklo_epi32(x[0], x[1]), _mm256_unpackhi_epi32(x[0], x[1]),
                          _mm256_unpacklo_epi32(x[4], x[5]), _mm256_unpackhi_epi32(x[4], x[5]),
                          _mm256_unpacklo_epi32(x[2], x[3]), _mm256_unpackhi_epi32(x[2], x[3]),
                          _mm256_unpacklo_epi32(x[6], x[7]), _mm256_unpackhi_epi32(x[6], x[7])};
    for (int g = 0; g < 8; ++g) {  // group g of the 8 keys of each lane, then nibbles -> bytes in value order
      const __m256i c =
          g % 2 ? _mm256_unpackhi_epi64(y[g / 2], y[4 + g / 2]) : _mm256_unpacklo_epi64(y[g / 2], y[4 + g / 2]);
      const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(c, low));
      const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(c, 4), low));
      t.v[8 * b + g][0] = _mm256_unpacklo_epi8(lo, hi);
      t.v[8 * b + g][1] = _mm256_unpackhi_epi8(lo, hi);
    }
  }
  for (int64_t w = 0; w < kTile; ++w)
    for (int64_t b = 0; b < kBlocks; ++b)
      t.scale[b][(w / 4) % 2][w % 4 + 4 * (w / 8)] = key_scale(keys[w * row_bytes + kDim / 2 + b]);
}

__m256i broadcast4(const int8_t* c) {  // four signed codes to every 32-bit lane
  int32_t v;
  std::memcpy(&v, c, 4);
  return _mm256_set1_epi32(v);
}

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
    for (; h + 8 < q.heads; h += 16) {
      const int64_t hs[2] = {h, h + 8};
      __m256 d[2][2] = {};
      head_dots<2>(t, q, hs, d);
      add(h, d[0]), add(h + 8, d[1]);
    }
    if (h < q.heads) {
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
