// The AVX-512 VNNI FP4 indexer kernel (ops/fp4_dot.h), D_I = 128: this file
// alone is compiled with -mavx512{f,bw,vl,vnni} and runs only where the CPU
// reports them (fp4_dot.cpp asks). Thirty-two keys per pass, transposed once
// in 512-bit vectors (four keys' blocks per vector, 16-bit groups in each
// 128-bit lane; the 256-bit form of two 16-key tiles before cost ~2x) to one
// key per 32-bit lane (four values each, as unsigned bytes 2k+12 in [0, 24]
// through a 16-entry byte shuffle of the nibbles), then reused by every head. One vpdpbusd per group of four values
// multiplies the keys' 2k+12 by the query's signed 2q (broadcast; folded: times 2^shift of its block, at most 8 · 12)
// and adds the four products to a 32-bit sum that starts at −12·Σ of them: a block's exact integer sum at its query
// exponent for 16 keys in 8 instructions, no horizontal adds. One vpsllvd per block puts it at its key exponent and the
// four blocks add up to T (ops/fp4_dot.h), exact in 32 bits while the shifts total at most kSumShift (else the tile
// goes to the scalar kernel); one vcvtdq2ps per head and 16 keys then replaces the per block conversion and two
// multiplies of the kernel before. The fp32 steps are the scalar kernel's, in its order. The per-head steps are inlined
// into one loop (addresses of heads c + 8n are constant offsets) and the keys' scales come from one gather of their
// scale words per half. Splitting each block's vpdpbusd chains in two and broadcasting the query from memory inside
// vpdpbusd were tried and did not measure faster (docs/performance.md).
#include "ops/fp4_dot.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace dsv4::fp4dot {
namespace {

constexpr int64_t kTile = 16, kDim = 128, kGroups = kDim / 4, kBlocks = 4;
constexpr int64_t kAhead = 2;  // wide tiles between a prefetch and its use

// The streamed keys' lines [at, at + bytes) from `keys` into L1, ahead of the
// transposition's 32 scattered row loads (+40-60% measured at 16K and 262K
// keys: the hardware prefetchers do not keep up). A prefetch never faults, and
// past the keys of this call it fetches the next call's (the same thread's
// next run of keys in the indexer stage) or nothing used.
void prefetch(const uint8_t* keys, size_t at, size_t bytes) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(keys) + at;
  for (size_t i = 0; i < bytes; i += 64) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T0);
}

#define DSV4_INLINE inline __attribute__((always_inline))

// 32 keys: v[g][j] holds values 4g..4g+3 of key 8 (l / 4) + 4 j + l % 4 in
// 32-bit lane l, as unsigned bytes 2k+12; in the same lanes, shift[b][j]: the
// keys' block-b exponents above their smallest, and smallest[j]: that
// smallest block scale; spread: the largest difference.
struct WideTile {
  __m512i v[kGroups][2];
  __m512i shift[kBlocks][2];
  __m512 smallest[2];
  int spread;
};

// Lane l of half j holds key 8 (l / 4) + 4 j + l % 4. A key's four scale bytes are one 32-bit word (after its 64 code
// bytes); the smallest byte becomes the float 2^(byte - 127) (key_scale: byte 0 is 2^-127).
void load_scales(const uint8_t* keys, size_t row_bytes, WideTile& t) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i byte = _mm512_set1_epi32(0xff), tiny = _mm512_set1_epi32(0x00400000);
  __m512i spread = _mm512_setzero_si512();
  for (int j = 0; j < 2; ++j) {
    const __m512i key = _mm512_add_epi32(lane, _mm512_set1_epi32(4 * j));
    const __m512i at = _mm512_add_epi32(_mm512_mullo_epi32(key, _mm512_set1_epi32(static_cast<int>(row_bytes))),
                                        _mm512_set1_epi32(kDim / 2));
    const __m512i words = _mm512_i32gather_epi32(at, keys, 1);
    __m512i e[kBlocks];
    for (int b = 0; b < kBlocks; ++b) e[b] = _mm512_and_si512(_mm512_srli_epi32(words, 8 * b), byte);
    const __m512i lo = _mm512_min_epu32(_mm512_min_epu32(e[0], e[1]), _mm512_min_epu32(e[2], e[3]));
    const __m512i hi = _mm512_max_epu32(_mm512_max_epu32(e[0], e[1]), _mm512_max_epu32(e[2], e[3]));
    for (int b = 0; b < kBlocks; ++b) t.shift[b][j] = _mm512_sub_epi32(e[b], lo);
    spread = _mm512_max_epu32(spread, _mm512_sub_epi32(hi, lo));
    const __m512i bits =
        _mm512_mask_mov_epi32(_mm512_slli_epi32(lo, 23), _mm512_cmpeq_epi32_mask(lo, _mm512_setzero_si512()), tiny);
    t.smallest[j] = _mm512_castsi512_ps(bits);
  }
  t.spread = static_cast<int>(_mm512_reduce_max_epu32(spread));
}

// Per block, an 8 x 8 transposition of 16-bit groups (two code bytes, four
// values) in each 128-bit lane, lane L holding keys 8L..8L+7, then nibbles
// -> bytes in value order through a 16-entry byte shuffle.
void load_codes(const uint8_t* keys, size_t row_bytes, WideTile& t) {
  const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  const __m512i low = _mm512_set1_epi8(0x0f);
  auto row = [&](int64_t w, int64_t b) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(keys + w * row_bytes + 16 * b));
  };
  for (int64_t b = 0; b < kBlocks; ++b) {
    __m512i r[8], x[8];  // r[j]: block b of keys j, j + 8, j + 16, j + 24
    for (int j = 0; j < 8; ++j) {
      const __m512i lo2 = _mm512_inserti32x4(_mm512_castsi128_si512(row(j, b)), row(j + 8, b), 1);
      r[j] = _mm512_inserti32x4(_mm512_inserti32x4(lo2, row(j + 16, b), 2), row(j + 24, b), 3);
    }
    for (int j = 0; j < 8; j += 2)
      x[j / 2] = _mm512_unpacklo_epi16(r[j], r[j + 1]), x[4 + j / 2] = _mm512_unpackhi_epi16(r[j], r[j + 1]);
    const __m512i y[8] = {_mm512_unpacklo_epi32(x[0], x[1]), _mm512_unpackhi_epi32(x[0], x[1]),
                          _mm512_unpacklo_epi32(x[4], x[5]), _mm512_unpackhi_epi32(x[4], x[5]),
                          _mm512_unpacklo_epi32(x[2], x[3]), _mm512_unpackhi_epi32(x[2], x[3]),
                          _mm512_unpacklo_epi32(x[6], x[7]), _mm512_unpackhi_epi32(x[6], x[7])};
    for (int g = 0; g < 8; ++g) {  // group g of the 8 keys of each lane
      const __m512i c =
          g % 2 ? _mm512_unpackhi_epi64(y[g / 2], y[4 + g / 2]) : _mm512_unpacklo_epi64(y[g / 2], y[4 + g / 2]);
      const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(c, low));
      const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(c, 4), low));
      t.v[8 * b + g][0] = _mm512_unpacklo_epi8(lo, hi);
      t.v[8 * b + g][1] = _mm512_unpackhi_epi8(lo, hi);
    }
  }
}

void load_wide(const uint8_t* keys, size_t row_bytes, WideTile& t) {
  load_codes(keys, row_bytes, t);
  load_scales(keys, row_bytes, t);
}

// Folded query codes and offsets (ops/fp4_dot.h) of head c and every 8th head after it.
struct Heads {
  const int8_t* codes;    // head c's [kDim]; head c + 8n at + 8n·kDim
  const int32_t* offset;  // [kBlocks] each, the same strides
};

// t[n][j] += block b's exact sums for heads c + 8n against the halves j, at
// their exponents above the smallest (the query's are in its folded codes).
template <int NH>
DSV4_INLINE void block_sums(const WideTile& t, const Heads& q, int b, __m512i (&sum)[NH][2]) {
  __m512i acc[NH][2];
  for (int n = 0; n < NH; ++n) acc[n][0] = acc[n][1] = _mm512_set1_epi32(-q.offset[8 * n * kBlocks + b]);
  for (int g = 0; g < 8; ++g) {
    const __m512i k0 = t.v[8 * b + g][0], k1 = t.v[8 * b + g][1];
    for (int n = 0; n < NH; ++n) {
      int32_t c;
      std::memcpy(&c, q.codes + 8 * n * kDim + 32 * b + 4 * g, 4);
      const __m512i qg = _mm512_set1_epi32(c);
      acc[n][0] = _mm512_dpbusd_epi32(acc[n][0], k0, qg);
      acc[n][1] = _mm512_dpbusd_epi32(acc[n][1], k1, qg);
    }
  }
  for (int n = 0; n < NH; ++n)
    for (int j = 0; j < 2; ++j) {
      const __m512i shifted = _mm512_sllv_epi32(acc[n][j], t.shift[b][j]);
      sum[n][j] = b == 0 ? shifted : _mm512_add_epi32(sum[n][j], shifted);
    }
}

// dot[n][j] = fp32(T) for heads c + 8n against the halves j.
template <int NH>
DSV4_INLINE void head_dots(const WideTile& t, const Heads& q, __m512 (&dot)[NH][2]) {
  __m512i sum[NH][2];
  for (int b = 0; b < kBlocks; ++b) block_sums<NH>(t, q, b, sum);
  for (int n = 0; n < NH; ++n)
    for (int j = 0; j < 2; ++j) dot[n][j] = _mm512_cvtepi32_ps(sum[n][j]);
}

// acc[j] += a[h + 8n] · base[h + 8n] · max(dot[n][j], 0), n in order (fused multiply-adds, head order).
template <int NH>
DSV4_INLINE void add_heads(const WideTile& t, const Query& q, const float* a, int64_t h, __m512 (&acc)[2]) {
  const Heads hs{&q.folded[h * kDim], &q.folded_offset[h * kBlocks]};
  __m512 d[NH][2];
  head_dots<NH>(t, hs, d);
  const __m512 zero = _mm512_setzero_ps();
  for (int n = 0; n < NH; ++n)
    for (int j = 0; j < 2; ++j)
      acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(a[h + 8 * n]), _mm512_max_ps(d[n][j], zero), acc[j]);
}

// s[0..32) of one wide tile: heads h = c mod 8 into partial sum kLane[c], in
// head order, four at a time (a: a · base per head); their sum times the key's smallest scale.
void tile_scores(const WideTile& t, const Query& q, const float* a, float* s) {
  alignas(64) float part[8][2][16];  // in memory: the registers hold the heads' sums
  for (int64_t c = 0; c < 8; ++c) {
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t h = c;
    for (; h + 24 < q.heads; h += 32) add_heads<4>(t, q, a, h, acc);  // eight independent sums in flight
    for (; h + 8 < q.heads; h += 16) add_heads<2>(t, q, a, h, acc);
    for (; h < q.heads; h += 8) add_heads<1>(t, q, a, h, acc);
    _mm512_store_ps(part[kLane[c]][0], acc[0]), _mm512_store_ps(part[kLane[c]][1], acc[1]);
  }
  alignas(64) float r[2][16];
  for (int j = 0; j < 2; ++j) {
    auto p = [&](int k) { return _mm512_load_ps(part[k][j]); };
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(p(0), p(1)), _mm512_add_ps(p(2), p(3))),
                                     _mm512_add_ps(_mm512_add_ps(p(4), p(5)), _mm512_add_ps(p(6), p(7))));
    _mm512_store_ps(r[j], _mm512_mul_ps(sum, t.smallest[j]));
  }
  for (int j = 0; j < 2; ++j)  // lane l of half j: key 8 (l / 4) + 4 j + l % 4
    for (int l = 0; l < 16; ++l) s[8 * (l / 4) + 4 * j + l % 4] = r[j][l];
}

}  // namespace

double dpbusd_peak(int64_t iters) {
  if (!avx512_vnni()) return 0;
  __m512i acc[16], x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-2);
  for (auto& v : acc) v = _mm512_setzero_si512();
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& v : acc) v = _mm512_dpbusd_epi32(v, x, y);
    __asm__ volatile("" : "+v"(x));  // keeps the products inside the loop
  }
  __m512i all = acc[0];
  for (int j = 1; j < 16; ++j) all = _mm512_add_epi32(all, acc[j]);
  __asm__ volatile("" : : "v"(all));
  return 64.0 * 16 * static_cast<double>(iters);
}

bool scores_avx512(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s) {
  if (q.dim != kDim || q.heads % 8 != 0 || q.heads > 1024 || q.folded.empty()) return false;
  float aq[1024];  // the heads' weights times their smallest scale
  for (int64_t h = 0; h < q.heads; ++h) aq[h] = a[h] * q.base[h];
  WideTile t;
  constexpr size_t kRow = kDim / 2 + kBlocks;
  uint8_t pad[2 * kTile * kRow];
  float out[2 * kTile];
  for (int64_t w = 0; w < n; w += 2 * kTile) {
    const int64_t m = std::min<int64_t>(2 * kTile, n - w);
    const uint8_t* at = keys + w * row_bytes;
    size_t stride = row_bytes;
    if (m < 2 * kTile) {  // the last keys, zero-padded to a wide tile
      std::memset(pad, 0, sizeof pad);
      for (int64_t i = 0; i < m; ++i) std::memcpy(pad + i * kRow, at + i * row_bytes, kRow);
      at = pad, stride = kRow;
    }
    prefetch(keys, (w + kAhead * 2 * kTile) * row_bytes, 2 * kTile * row_bytes);
    load_wide(at, stride, t);
    if (q.max_shift + t.spread > kSumShift) {  // past what 32-bit sums hold: the scalar kernel
      scores_scalar(q, a, keys + w * row_bytes, row_bytes, m, s + w);
      continue;
    }
    tile_scores(t, q, aq, m < 2 * kTile ? out : s + w);
    if (m < 2 * kTile) std::memcpy(s + w, out, m * sizeof(float));
  }
  return true;
}

}  // namespace dsv4::fp4dot
#else
namespace dsv4::fp4dot {
bool scores_avx512(const Query&, const float*, const uint8_t*, size_t, int64_t, float*) { return false; }
double dpbusd_peak(int64_t) { return 0; }
}  // namespace dsv4::fp4dot
#endif
