// The AVX2 FP4 indexer kernel (ops/fp4_dot.h) at D_I = 128, one key at a
// time: its 64 code bytes become four vectors of unsigned 2k+12 in [0, 24]
// through a 16-entry byte shuffle; vpmaddubsw multiplies them with the
// query's signed 2q (pairs sum to at most 2·288: no saturation), vpmaddwd sums
// to int32, horizontal adds give one sum per block, and 12·Σ2q per block is
// subtracted back; each block sum is shifted by its query and key exponents
// above the smallest (vpsllvd) and a head's four added: T, exact in 32 bits
// where the shifts total at most kSumShift (else that key goes to the scalar
// kernel). T to fp32 and the heads' sums are the scalar kernel's operations
// in its order (-ffp-contract=off, the one fused multiply-add written out). A 16-keys-per-pass form without horizontal
// adds (fp4_tile.h's transposition, as the AVX-512 kernel runs it) measured
// 7-20% slower on the Zen 5 this was tuned on: vpmaddubsw and vpmaddwd,
// not the horizontal adds, bind this kernel there (docs/performance.md).
#include "ops/fp4_dot.h"

#ifdef __AVX2__
#include <immintrin.h>

#include <algorithm>
#endif

namespace dsv4::fp4dot {

#ifndef __AVX2__
void avx2_layout(Query&) {}
bool scores_avx2(const Query&, const float*, const uint8_t*, size_t, int64_t, float*) { return false; }
double maddubs_peak(int64_t) { return 0; }
#else
double maddubs_peak(int64_t iters) {
  __m256i acc[12], x = _mm256_set1_epi8(3), y = _mm256_set1_epi8(-2);
  for (auto& v : acc) v = _mm256_setzero_si256();
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& v : acc) v = _mm256_add_epi16(v, _mm256_maddubs_epi16(x, y));
    __asm__ volatile("" : "+x"(x));  // keeps the products inside the loop
  }
  __m256i all = acc[0];
  for (int j = 1; j < 12; ++j) all = _mm256_add_epi16(all, acc[j]);
  __asm__ volatile("" : : "x"(all));
  return 32.0 * 12 * static_cast<double>(iters);
}

void avx2_layout(Query& q) {
  const int64_t heads = q.heads, dim = q.dim;
  if (dim != 128 || heads % 8 != 0) return;
  q.lanes.resize(static_cast<size_t>(heads * dim));
  q.pair_scale.resize(static_cast<size_t>(heads * 4));
  q.pair_offset.resize(static_cast<size_t>(heads * 4));
  q.pair_shift.resize(static_cast<size_t>(heads * 4));
  for (int64_t h = 0; h < heads; ++h) {
    const int8_t* c = &q.codes[h * dim];
    int8_t* l = &q.lanes[h * dim];
    for (int64_t g = 0; g < 2; ++g)  // 64 values: [evens of block 2g | of 2g+1], [odds of 2g | of 2g+1]
      for (int64_t j = 0; j < 16; ++j) {
        l[64 * g + j] = c[64 * g + 2 * j], l[64 * g + 16 + j] = c[64 * g + 32 + 2 * j];
        l[64 * g + 32 + j] = c[64 * g + 2 * j + 1], l[64 * g + 48 + j] = c[64 * g + 32 + 2 * j + 1];
      }
    // Lane order of a head pair (h even): [b0 b2 b0' b2' | b1 b3 b1' b3'], ' = head h+1.
    const int64_t pair = h / 2 * 8, second = h % 2 * 2;
    for (int64_t b = 0; b < 4; ++b) {
      const int64_t slot = pair + (b % 2) * 4 + second + b / 2;
      q.pair_scale[slot] = q.scale[h * 4 + b];
      q.pair_offset[slot] = q.offset[h * 4 + b];
      q.pair_shift[slot] = q.shift[h * 4 + b];
    }
  }
}

bool scores_avx2(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s) {
  if (q.dim != 128 || q.heads % 8 != 0 || q.heads > 1024 || q.lanes.empty()) return false;
  const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,  //
                                       12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
  const __m256i low = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  const auto* lanes = reinterpret_cast<const __m256i*>(q.lanes.data());
  float a_lanes[1024];  // a · base in the order of the dots below: heads h + {0 1 4 5 2 3 6 7}
  for (int64_t h = 0; h < q.heads; ++h) a_lanes[h / 8 * 8 + kLane[h % 8]] = a[h] * q.base[h];
  for (int64_t w = 0; w < n; ++w) {
    const uint8_t* key = keys + static_cast<size_t>(w) * row_bytes;
    const uint8_t lo = std::min(std::min(key[64], key[65]), std::min(key[66], key[67]));
    const uint8_t hi = std::max(std::max(key[64], key[65]), std::max(key[66], key[67]));
    if (q.max_shift + (hi - lo) > kSumShift) {  // past what 32-bit sums hold: the scalar kernel
      scores_scalar(q, a, key, row_bytes, 1, s + w);
      continue;
    }
    const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key));
    const __m256i k1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + 32));
    const __m256i e0 = _mm256_shuffle_epi8(lut, _mm256_and_si256(k0, low));
    const __m256i o0 = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(k0, 4), low));
    const __m256i e1 = _mm256_shuffle_epi8(lut, _mm256_and_si256(k1, low));
    const __m256i o1 = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(k1, 4), low));
    const int d0 = key[64] - lo, d1 = key[65] - lo, d2 = key[66] - lo, d3 = key[67] - lo;
    const __m256i dk = _mm256_setr_epi32(d0, d2, d0, d2, d1, d3, d1, d3);
    auto head = [&](int64_t h) {          // lane 0: block 0 | block 2 partial sums; lane 1: block 1 | block 3
      const __m256i* qh = lanes + h * 4;  // evens, odds of values 0..63, then of 64..127
      const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(e0, _mm256_loadu_si256(qh)),
                                          _mm256_maddubs_epi16(o0, _mm256_loadu_si256(qh + 1)));
      const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(e1, _mm256_loadu_si256(qh + 2)),
                                          _mm256_maddubs_epi16(o1, _mm256_loadu_si256(qh + 3)));
      return _mm256_hadd_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
    };
    auto load = [](const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); };
    __m256 acc = _mm256_setzero_ps();  // lane j: the heads h with kLane[h % 8] = j
    for (int64_t h = 0; h < q.heads; h += 8) {
      __m256i t[4];  // block sums of head pairs at their shifts: [b0 b2 b0' b2' | b1 b3 b1' b3'], ' = second head
      for (int64_t k = 0; k < 4; ++k) {
        const int64_t hp = h + 2 * k;
        const __m256i sums = _mm256_sub_epi32(_mm256_hadd_epi32(head(hp), head(hp + 1)), load(&q.pair_offset[hp * 4]));
        t[k] = _mm256_sllv_epi32(sums, _mm256_add_epi32(load(&q.pair_shift[hp * 4]), dk));
      }
      // b0 + b1 and b2 + b3 of heads h..h+3, then of h+4..h+7; hadd: one T per head (integers: exact).
      const __m256i s01 =
          _mm256_add_epi32(_mm256_permute2x128_si256(t[0], t[1], 0x20), _mm256_permute2x128_si256(t[0], t[1], 0x31));
      const __m256i s23 =
          _mm256_add_epi32(_mm256_permute2x128_si256(t[2], t[3], 0x20), _mm256_permute2x128_si256(t[2], t[3], 0x31));
      const __m256 dots = _mm256_cvtepi32_ps(_mm256_hadd_epi32(s01, s23));  // heads h + {0 1 4 5 | 2 3 6 7}
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(&a_lanes[h]), _mm256_max_ps(dots, _mm256_setzero_ps()), acc);
    }
    alignas(32) float p[8];
    _mm256_store_ps(p, acc);
    s[w] = (((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))) * key_scale(lo);
  }
  return true;
}
#endif

}  // namespace dsv4::fp4dot
