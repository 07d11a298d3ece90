// The AVX2+FMA flash-decoding run (ops/attend_run.h), the order of the scalar
// kernel in 8 lanes: logits and softmax with 8 heads per vector
// (transpose_avx2: the query to [D, H'] in 8x8 tiles), 6 keys x 16 heads per tile (12
// accumulators, 15 of the 16 registers); P·V with 8 dims per vector, 6 heads
// x 16 dims per tile, over the rows where they are (no copy); dims past the
// last multiple of 8 in the scalar order.
#include <limits>

#include "ops/attend_run.h"
#include "ops/vec.h"

namespace dsv4::attn_run {

#ifndef DSV4_AVX2
bool attend_avx2(const Run&, float*, float*, float*, float*) { return false; }
bool transpose_avx2(const float*, int64_t, int64_t, float*) { return false; }
#else
namespace {

constexpr int kKeys = 6, kHeads = 6;
constexpr int64_t kChunk = 128;  // dims per pass of the logits: the query's [128, 16] slice stays in L1

// qt[d][h] = q[h][d] for 8 heads x 8 dims (the standard unpack / shuffle / permute transposition).
void transpose8(const float* q, int64_t dim, float* qt, int64_t hp) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(q + i * dim);
  for (int i = 0; i < 8; i += 2)
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44), r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44), r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(qt + i * hp, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(qt + (i + 4) * hp, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// x[k][h0 .. h0+16) for keys k0 .. k0+6 (those < n stored) over dims [d0, d1), continuing the sums in x after d0 > 0.
void logits_tile(const Run& r, int64_t hp, int64_t h0, int64_t k0, int64_t d0, int64_t d1, float* x) {
  const float* kr[kKeys];
  for (int j = 0; j < kKeys; ++j) kr[j] = r.rows[k0 + j < r.n ? k0 + j : r.n - 1];
  __m256 acc[kKeys][2];
  for (int j = 0; j < kKeys; ++j)
    for (int v = 0; v < 2; ++v)
      acc[j][v] = d0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(x + (k0 + j < r.n ? k0 + j : 0) * hp + h0 + 8 * v);
  for (int64_t d = d0; d < d1; ++d) {
    const __m256 q0 = _mm256_loadu_ps(r.qt + d * hp + h0), q1 = _mm256_loadu_ps(r.qt + d * hp + h0 + 8);
    for (int j = 0; j < kKeys; ++j) {
      const __m256 kd = _mm256_broadcast_ss(kr[j] + d);
      acc[j][0] = _mm256_fmadd_ps(q0, kd, acc[j][0]);
      acc[j][1] = _mm256_fmadd_ps(q1, kd, acc[j][1]);
    }
  }
  for (int j = 0; j < kKeys; ++j)  // constant bounds: the accumulators stay in registers
    if (k0 + j < r.n)
      for (int v = 0; v < 2; ++v) _mm256_storeu_ps(x + (k0 + j) * hp + h0 + 8 * v, acc[j][v]);
}

// Scale, max, exponentials and their sum, 8 heads per vector; the state
// ml = m [H'], l [H'] continued and α [H'] written after them.
void softmax(const Run& r, int64_t hp, float* x, float* ml) {
  const __m256 s = _mm256_set1_ps(r.scale);
  for (int64_t h = 0; h < hp; h += 8) {
    const __m256 m0 = _mm256_loadu_ps(ml + h);
    __m256 mv = m0, lv = _mm256_setzero_ps();
    for (int64_t k = 0; k < r.n; ++k) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k * hp + h), s);
      _mm256_storeu_ps(x + k * hp + h, v);
      mv = _mm256_max_ps(mv, v);
    }
    for (int64_t k = 0; k < r.n; ++k) {
      const __m256 e = vec::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k * hp + h), mv));
      _mm256_storeu_ps(x + k * hp + h, e);
      lv = _mm256_add_ps(lv, e);
    }
    const __m256 a = vec::exp8(_mm256_sub_ps(m0, mv));
    _mm256_storeu_ps(ml + h, mv), _mm256_storeu_ps(ml + 2 * hp + h, a);
    _mm256_storeu_ps(ml + hp + h, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(ml + hp + h), a), lv));
  }
}

// o[h0 .. h0+6)[d0 .. d0+8·DV) · α, then over all keys from the packed slice
// v [n, 16] (heads >= H computed from p's padding and head H-1's o, not stored).
template <int DV>
void pv_tile(const Run& r, const float* p, const float* alpha, int64_t hp, int64_t h0, const float* v, int64_t d0,
             float* o) {
  __m256 acc[kHeads][DV];
  for (int i = 0; i < kHeads; ++i) {
    const float* oh = o + (h0 + i < r.heads ? h0 + i : r.heads - 1) * r.dim + d0;
    const __m256 a = _mm256_broadcast_ss(alpha + h0 + i);
    for (int u = 0; u < DV; ++u)
      acc[i][u] = r.fresh ? _mm256_setzero_ps() : _mm256_mul_ps(_mm256_loadu_ps(oh + 8 * u), a);
  }
  for (int64_t k = 0; k < r.n; ++k) {
    __m256 vk[DV];
    for (int u = 0; u < DV; ++u) vk[u] = _mm256_load_ps(v + k * 16 + 8 * u);
    for (int i = 0; i < kHeads; ++i) {
      const __m256 pk = _mm256_broadcast_ss(p + k * hp + h0 + i);
      for (int u = 0; u < DV; ++u) acc[i][u] = _mm256_fmadd_ps(pk, vk[u], acc[i][u]);
    }
  }
  for (int i = 0; i < kHeads; ++i)
    if (h0 + i < r.heads)
      for (int u = 0; u < DV; ++u) _mm256_storeu_ps(o + (h0 + i) * r.dim + d0 + 8 * u, acc[i][u]);
}

// The rows' dims [d0, d0 + 8·DV) packed first (as the AVX-512 kernel: rows 2 KiB apart share L1 sets).
template <int DV>
void pv_slice(const Run& r, const float* p, const float* alpha, int64_t hp, int64_t d0, float* v, float* o) {
  for (int64_t k = 0; k < r.n; ++k)
    for (int u = 0; u < DV; ++u) _mm256_store_ps(v + k * 16 + 8 * u, _mm256_loadu_ps(r.rows[k] + d0 + 8 * u));
  for (int64_t h0 = 0; h0 < r.heads; h0 += kHeads) pv_tile<DV>(r, p, alpha, hp, h0, v, d0, o);
}

}  // namespace

bool transpose_avx2(const float* q, int64_t heads, int64_t dim, float* qt) {
  const int64_t hp = padded_heads(heads), h8 = heads / 8 * 8, d8 = dim / 8 * 8;
  for (int64_t h = 0; h < h8; h += 8)
    for (int64_t d = 0; d < d8; d += 8) transpose8(q + h * dim + d, dim, qt + d * hp + h, hp);
  for (int64_t d = 0; d < dim; ++d)  // the edges: dims past d8, heads past h8 (zero past H)
    for (int64_t h = d < d8 ? h8 : 0; h < hp; ++h) qt[d * hp + h] = h < heads ? q[h * dim + d] : 0.0f;
  return true;
}

bool attend_avx2(const Run& r, float* scratch, float* o, float* m, float* l) {
  const int64_t hp = padded_heads(r.heads), dim = r.dim, d8 = dim / 8 * 8;
  float *x = scratch, *ml = x + r.n * hp + kLanes, *alpha = ml + 2 * hp, *v = alpha + hp;
  v += (kLanes - reinterpret_cast<uintptr_t>(v) / sizeof(float) % kLanes) % kLanes;  // on a cache line
  for (int64_t h = 0; h < hp; ++h)  // the state padded: heads past H start empty
    ml[h] = h < r.heads && !r.fresh ? m[h] : -std::numeric_limits<float>::infinity(),
    ml[hp + h] = h < r.heads && !r.fresh ? l[h] : 0.0f;
  for (int64_t d0 = 0; d0 < dim; d0 += kChunk)  // chunks of dims outermost: the query slice stays in L1
    for (int64_t k0 = 0; k0 < r.n; k0 += kKeys)
      for (int64_t h0 = 0; h0 < hp; h0 += 16) logits_tile(r, hp, h0, k0, d0, d0 + kChunk < dim ? d0 + kChunk : dim, x);
  softmax(r, hp, x, ml);
  for (int64_t h = 0; h < r.heads; ++h) m[h] = ml[h], l[h] = ml[hp + h];
  for (int64_t d0 = 0; d0 < d8; d0 += 16)  // a slice of the rows stays in L1 across the head blocks
    d0 + 16 <= d8 ? pv_slice<2>(r, x, alpha, hp, d0, v, o) : pv_slice<1>(r, x, alpha, hp, d0, v, o);
  if (d8 < dim) pv_scalar(r, x, alpha, d8, dim, o);
  return true;
}
#endif

}  // namespace dsv4::attn_run
