// The AVX-512 FP8 row kernel (ops/fp8_rows.h): this file alone is compiled
// with -mavx512f and runs only where the CPU reports it (avx512() asks).
// Per 8 columns and pair of rows (a, b): the 8 codes of a and the 8 of b in
// one 128-bit register, sign-extended to 16 dwords, shifted left 20 and
// masked to sign | magnitude (the fp32 bits of v·2^-120, subnormal codes
// included), then one multiply-add against the activations' 8 columns
// broadcast to both halves: lanes 0-7 are row a's accumulator, 8-15 row b's.
#include "ops/fp8_rows.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && defined(__GFNI__)
#include <immintrin.h>

namespace dsv4::fp8rows {
namespace {

constexpr int kPairs = kRows / 2;

template <int R>
void run(const float* const* xp, const uint8_t* const* rows, const uint8_t* const* next, int64_t i0, int64_t i1,
         float* acc, int64_t ld) {
  const float* x[R];
  const uint8_t* w[kRows];
  for (int r = 0; r < R; ++r) x[r] = xp[r];
  for (int j = 0; j < kRows; ++j) w[j] = rows[j];
  const __m512i mask = _mm512_set1_epi32(int(0x87F00000u));
  __m512 s[R][kPairs];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < kPairs; ++p) s[r][p] = _mm512_loadu_ps(acc + 8 * (r * ld + 2 * p));
  for (int64_t i = i0; i < i1; i += 8) {
    if (next && i % 64 == 0)
      for (int j = 0; j < kRows; ++j) _mm_prefetch(reinterpret_cast<const char*>(next[j] + i), _MM_HINT_T0);
    __m512 wv[kPairs];
    for (int p = 0; p < kPairs; ++p) {
      const __m128i codes = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w[2 * p] + i)),
                                               _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w[2 * p + 1] + i)));
      wv[p] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(_mm512_cvtepi8_epi32(codes), 20), mask));
    }
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(x[r] + i))));
      for (int p = 0; p < kPairs; ++p) s[r][p] = _mm512_fmadd_ps(xv, wv[p], s[r][p]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < kPairs; ++p) _mm512_storeu_ps(acc + 8 * (r * ld + 2 * p), s[r][p]);
}

// GFNI + VBMI: the sign and magnitude bits of fp32 byte 3 (c7, c6..c4) and
// byte 2 (c3..c0 at the top) are bit permutations of the code: one affine
// transform each over 64 codes, then a two-source byte permute puts them in
// place and zeroes bytes 0-1. Per 32 columns of a pair: 2 + 4 instructions
// for 64 weights instead of 4 x (unpack, extend, shift, mask).
template <int R>
void run_gfni(const float* const* xp, const uint8_t* const* rows, const uint8_t* const* next, int64_t i0, int64_t i1,
              float* acc, int64_t ld) {
  const float* x[R];
  const uint8_t* w[kRows];
  for (int r = 0; r < R; ++r) x[r] = xp[r];
  for (int j = 0; j < kRows; ++j) w[j] = rows[j];
  // Row b of output bit i is byte 7 - i: A3 = c7 -> 7, c6..c4 -> 2..0; A2 = c3..c0 -> 7..4.
  const __m512i a3 = _mm512_set1_epi64(0x1020400000000080LL), a2 = _mm512_set1_epi64(0x0000000001020408LL);
  __m512i idx[4];  // output k, dword d: byte 2 <- A2 of code (d < 8 ? 0 : 32) + 8k + d % 8, byte 3 <- A3 of it
  for (int k = 0; k < 4; ++k) {
    alignas(64) uint8_t b[64] = {};
    for (int d = 0; d < 16; ++d) {
      const int src = (d < 8 ? 0 : 32) + 8 * k + d % 8;
      b[4 * d + 2] = static_cast<uint8_t>(src), b[4 * d + 3] = static_cast<uint8_t>(64 + src);
    }
    idx[k] = _mm512_load_si512(b);
  }
  const __mmask64 bytes23 = 0xCCCCCCCCCCCCCCCCULL;
  __m512 s[R][kPairs];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < kPairs; ++p) s[r][p] = _mm512_loadu_ps(acc + 8 * (r * ld + 2 * p));
  int64_t i = i0;
  for (; i + 32 <= i1; i += 32) {
    if (next && i % 64 == 0)
      for (int j = 0; j < kRows; ++j) _mm_prefetch(reinterpret_cast<const char*>(next[j] + i), _MM_HINT_T0);
    __m512 xv[R][4];
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < 4; ++k)
        xv[r][k] = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(x[r] + i + 8 * k))));
    for (int p = 0; p < kPairs; ++p) {
      const __m512i c =
          _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[2 * p] + i))),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[2 * p + 1] + i)), 1);
      const __m512i h3 = _mm512_gf2p8affine_epi64_epi8(c, a3, 0), h2 = _mm512_gf2p8affine_epi64_epi8(c, a2, 0);
      for (int k = 0; k < 4; ++k) {
        const __m512 wv = _mm512_castsi512_ps(_mm512_maskz_permutex2var_epi8(bytes23, h2, idx[k], h3));
        for (int r = 0; r < R; ++r) s[r][p] = _mm512_fmadd_ps(xv[r][k], wv, s[r][p]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < kPairs; ++p) _mm512_storeu_ps(acc + 8 * (r * ld + 2 * p), s[r][p]);
  if (i < i1) run<R>(xp, rows, next, i, i1, acc, ld);  // the last columns, 8 at a time
}

}  // namespace

bool avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("gfni");
  return yes;
}

bool micro(int m, const float* const* x, const uint8_t* const* rows, const uint8_t* const* next, int64_t i0, int64_t i1,
           float* acc, int64_t ld) {
  if (m == 1) return run_gfni<1>(x, rows, next, i0, i1, acc, ld), true;
  if (m == 2) return run_gfni<2>(x, rows, next, i0, i1, acc, ld), true;
  return false;
}

}  // namespace dsv4::fp8rows

#else  // not built for AVX-512: the AVX2 micro-tiles serve

namespace dsv4::fp8rows {
bool avx512() { return false; }
bool micro(int, const float* const*, const uint8_t* const*, const uint8_t* const*, int64_t, int64_t, float*, int64_t) {
  return false;
}
}  // namespace dsv4::fp8rows

#endif
