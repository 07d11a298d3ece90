// The FP4 indexer kernels' key tile (fp4_dot_avx2.cpp, fp4_dot_avx512.cpp;
// internal): 16 packed key rows (D_I = 128) transposed to one key per 32-bit
// lane, four values each, as unsigned bytes 2k+12 in [0, 24] (a 16-entry byte
// shuffle of the nibbles), ready for u8 x s8 multiply-adds against the
// query's four signed codes of a group broadcast to every lane. Internal
// linkage: each kernel's file compiles it for its own instruction set.
#pragma once
#ifdef __AVX2__
#include <immintrin.h>

#include <cstring>

#include "ops/fp4_dot.h"

namespace dsv4::fp4dot {
namespace {

constexpr int64_t kTile = 16, kDim = 128, kGroups = kDim / 4, kBlocks = 4;

// v[g][j]: values 4g..4g+3 of keys {0-3, 8-11} (j = 0) or {4-7, 12-15} (j = 1), a key per 32-bit lane.
struct KeyTile {
  __m256i v[kGroups][2];
  alignas(32) float scale[kBlocks][2][8];  // the keys' block scales in the same lanes
};

// Key w of the tile sits in half (w / 4) % 2, lane w % 4 + 4 (w / 8).
inline void load_tile(const uint8_t* keys, size_t row_bytes, KeyTile& t) {
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

inline __m256i broadcast4(const int8_t* c) {  // four signed codes to every 32-bit lane
  int32_t v;
  std::memcpy(&v, c, 4);
  return _mm256_set1_epi32(v);
}

}  // namespace
}  // namespace dsv4::fp4dot
#endif
