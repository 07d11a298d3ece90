// The AVX-512F flash-decoding run (ops/attend_run.h): this file alone is
// compiled with -mavx512f and runs only where the CPU reports it
// (attend_run.cpp asks); it includes no header with inline library code, so
// nothing built here for AVX-512 can be linked into code run elsewhere. The
// scalar kernel's order in 16 lanes: logits and softmax with 16 heads per
// vector (transpose_avx512: the query to [D, H'] in 16x16 tiles), tiles of up to 64
// heads x 6 keys (24 accumulators of the 32 registers; fewer heads, more keys)
// over dims in chunks of 128 so the query's slice stays in L1; P·V with 16
// dims per vector, 6 heads x 64 dims per tile over the rows where they are;
// dims past the last multiple of 16 in the scalar order.
#include "ops/attend_run.h"

#ifndef __AVX512F__
namespace dsv4::attn_run {
bool attend_avx512(const Run&, float*, float*, float*, float*) { return false; }
bool transpose_avx512(const float*, int64_t, int64_t, float*) { return false; }
}  // namespace dsv4::attn_run
#else
#include <immintrin.h>

namespace dsv4::attn_run {
namespace {

constexpr int kHeads = 6;
constexpr int64_t kChunk = 128;

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// vec::exp8 in 16 lanes, op for op.
inline __m512 exp16(__m512 x) {
  const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-87.3365447504f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), p, _mm512_castsi512_ps(e));
}

// Level b of the 16x16 transposition swaps bit b of the row with bit b of the
// column: rows i and i + b (bit b of i clear) exchange their off-diagonal halves.
struct Swaps {
  __m512i lo[4], hi[4];
  Swaps() {
    for (int l = 0, b = 8; l < 4; ++l, b /= 2) {
      alignas(64) int32_t a[16], c[16];
      for (int j = 0; j < 16; ++j) a[j] = (j & b) ? 16 + j - b : j, c[j] = (j & b) ? 16 + j : j + b;
      lo[l] = _mm512_load_si512(a), hi[l] = _mm512_load_si512(c);
    }
  }
};

template <int B>
inline __attribute__((always_inline)) void swap_level(__m512 (&r)[16], __m512i lo, __m512i hi) {
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    if (!(i & B)) {
      const __m512 a = r[i], c = r[i + B];
      r[i] = _mm512_permutex2var_ps(a, lo, c), r[i + B] = _mm512_permutex2var_ps(a, hi, c);
    }
}

void transpose16(const Swaps& s, const float* q, int64_t dim, float* qt, int64_t hp) {
  __m512 r[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(q + i * dim);
  swap_level<8>(r, s.lo[0], s.hi[0]);
  swap_level<4>(r, s.lo[1], s.hi[1]);
  swap_level<2>(r, s.lo[2], s.hi[2]);
  swap_level<1>(r, s.lo[3], s.hi[3]);
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) _mm512_storeu_ps(qt + j * hp, r[j]);
}

// x[k][h0 .. h0+16·HV) for keys k0 .. k0+24/HV (those < n stored) over dims
// [d0, d1), continuing the sums in x after d0 > 0.
template <int HV>
void logits_tile(const Run& r, int64_t hp, int64_t h0, int64_t k0, int64_t d0, int64_t d1, float* x) {
  constexpr int NK = 24 / HV;
  const float* kr[NK];
  for (int j = 0; j < NK; ++j) kr[j] = r.rows[min64(k0 + j, r.n - 1)];
  __m512 acc[NK][HV];
  for (int j = 0; j < NK; ++j)
    for (int v = 0; v < HV; ++v)
      acc[j][v] = d0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(x + min64(k0 + j, r.n - 1) * hp + h0 + 16 * v);
  for (int64_t d = d0; d < d1; ++d) {
    __m512 qv[HV];
    for (int v = 0; v < HV; ++v) qv[v] = _mm512_loadu_ps(r.qt + d * hp + h0 + 16 * v);
    for (int j = 0; j < NK; ++j) {
      const __m512 kd = _mm512_set1_ps(kr[j][d]);
      for (int v = 0; v < HV; ++v) acc[j][v] = _mm512_fmadd_ps(qv[v], kd, acc[j][v]);
    }
  }
  for (int j = 0; j < NK; ++j)  // constant bounds: the accumulators stay in registers
    if (k0 + j < r.n)
      for (int v = 0; v < HV; ++v) _mm512_storeu_ps(x + (k0 + j) * hp + h0 + 16 * v, acc[j][v]);
}

template <int HV>
void logits_group(const Run& r, int64_t hp, int64_t h0, int64_t d0, int64_t d1, float* x) {
  for (int64_t k0 = 0; k0 < r.n; k0 += 24 / HV) logits_tile<HV>(r, hp, h0, k0, d0, d1, x);
}

void logits(const Run& r, int64_t hp, float* x) {
  for (int64_t d0 = 0; d0 < r.dim; d0 += kChunk) {
    const int64_t d1 = min64(d0 + kChunk, r.dim);
    for (int64_t h0 = 0; h0 < hp; h0 += 64) switch (min64(hp - h0, 64) / 16) {
        case 1: logits_group<1>(r, hp, h0, d0, d1, x); break;
        case 2: logits_group<2>(r, hp, h0, d0, d1, x); break;
        case 3: logits_group<3>(r, hp, h0, d0, d1, x); break;
        default: logits_group<4>(r, hp, h0, d0, d1, x); break;
      }
  }
}

// Scale, max, exponentials and their sum, 16 heads per vector; the state
// ml = m [H'], l [H'] continued and α [H'] written after them.
void softmax(const Run& r, int64_t hp, float* x, float* ml) {
  const __m512 s = _mm512_set1_ps(r.scale);
  for (int64_t h = 0; h < hp; h += 16) {
    const __m512 m0 = _mm512_loadu_ps(ml + h);
    __m512 mv = m0, lv = _mm512_setzero_ps();
    for (int64_t k = 0; k < r.n; ++k) {
      const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + k * hp + h), s);
      _mm512_storeu_ps(x + k * hp + h, v);
      mv = _mm512_max_ps(mv, v);
    }
    for (int64_t k = 0; k < r.n; ++k) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + k * hp + h), mv));
      _mm512_storeu_ps(x + k * hp + h, e);
      lv = _mm512_add_ps(lv, e);
    }
    const __m512 a = exp16(_mm512_sub_ps(m0, mv));
    _mm512_storeu_ps(ml + h, mv), _mm512_storeu_ps(ml + 2 * hp + h, a);
    _mm512_storeu_ps(ml + hp + h, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(ml + hp + h), a), lv));
  }
}

// o[h0 .. h0+6)[d0 .. d0+16·DV) · α, then over all keys from the packed
// slice v [n, 64] (heads >= H computed from p's padding and head H-1's o, not stored).
template <int DV>
void pv_tile(const Run& r, const float* p, const float* alpha, int64_t hp, int64_t h0, const float* v, int64_t d0,
             float* o) {
  __m512 acc[kHeads][DV];
  for (int i = 0; i < kHeads; ++i) {
    const float* oh = o + min64(h0 + i, r.heads - 1) * r.dim + d0;
    const __m512 a = _mm512_set1_ps(alpha[h0 + i]);
    for (int u = 0; u < DV; ++u)
      acc[i][u] = r.fresh ? _mm512_setzero_ps() : _mm512_mul_ps(_mm512_loadu_ps(oh + 16 * u), a);
  }
  for (int64_t k = 0; k < r.n; ++k) {
    __m512 vk[DV];
    for (int u = 0; u < DV; ++u) vk[u] = _mm512_load_ps(v + k * 64 + 16 * u);
    for (int i = 0; i < kHeads; ++i) {
      const __m512 pk = _mm512_set1_ps(p[k * hp + h0 + i]);
      for (int u = 0; u < DV; ++u) acc[i][u] = _mm512_fmadd_ps(pk, vk[u], acc[i][u]);
    }
  }
  for (int i = 0; i < kHeads; ++i)
    if (h0 + i < r.heads)
      for (int u = 0; u < DV; ++u) _mm512_storeu_ps(o + (h0 + i) * r.dim + d0 + 16 * u, acc[i][u]);
}

// The rows' dims [d0, d0 + 16·DV) packed contiguously first: rows 2 KiB apart
// fall into a few L1 sets, and the slice is read again by every head block.
template <int DV>
void pv_slice(const Run& r, const float* p, const float* alpha, int64_t hp, int64_t d0, float* v, float* o) {
  for (int64_t k = 0; k < r.n; ++k)
    for (int u = 0; u < DV; ++u) _mm512_store_ps(v + k * 64 + 16 * u, _mm512_loadu_ps(r.rows[k] + d0 + 16 * u));
  for (int64_t h0 = 0; h0 < r.heads; h0 += kHeads) pv_tile<DV>(r, p, alpha, hp, h0, v, d0, o);
}

}  // namespace

bool transpose_avx512(const float* q, int64_t heads, int64_t dim, float* qt) {
  const Swaps s;
  const int64_t hp = padded_heads(heads), h16 = heads / 16 * 16, d16 = dim / 16 * 16;
  for (int64_t h = 0; h < h16; h += 16)
    for (int64_t d = 0; d < d16; d += 16) transpose16(s, q + h * dim + d, dim, qt + d * hp + h, hp);
  for (int64_t d = 0; d < dim; ++d)  // the edges: dims past d16, heads past h16 (zero past H)
    for (int64_t h = d < d16 ? h16 : 0; h < hp; ++h) qt[d * hp + h] = h < heads ? q[h * dim + d] : 0.0f;
  return true;
}

bool attend_avx512(const Run& r, float* scratch, float* o, float* m, float* l) {
  const int64_t hp = padded_heads(r.heads), dim = r.dim, d16 = dim / 16 * 16;
  float *x = scratch, *ml = x + r.n * hp + kLanes, *alpha = ml + 2 * hp, *v = alpha + hp;
  v += (kLanes - reinterpret_cast<uintptr_t>(v) / sizeof(float) % kLanes) % kLanes;  // on a cache line
  for (int64_t h = 0; h < hp; ++h)  // the state padded: heads past H start empty
    ml[h] = h < r.heads && !r.fresh ? m[h] : -__builtin_inff(), ml[hp + h] = h < r.heads && !r.fresh ? l[h] : 0.0f;
  logits(r, hp, x);
  softmax(r, hp, x, ml);
  for (int64_t h = 0; h < r.heads; ++h) m[h] = ml[h], l[h] = ml[hp + h];
  for (int64_t d0 = 0; d0 < d16; d0 += 64)  // a slice of the rows stays in L1 across the head blocks
    switch (min64(d16 - d0, 64) / 16) {
      case 1: pv_slice<1>(r, x, alpha, hp, d0, v, o); break;
      case 2: pv_slice<2>(r, x, alpha, hp, d0, v, o); break;
      case 3: pv_slice<3>(r, x, alpha, hp, d0, v, o); break;
      default: pv_slice<4>(r, x, alpha, hp, d0, v, o); break;
    }
  if (d16 < dim) pv_scalar(r, x, alpha, d16, dim, o);
  return true;
}

}  // namespace dsv4::attn_run
#endif
