// The fused flash-decoding run (ops/attend_run.h): the scalar kernel, which
// spells out the per-lane order every kernel follows (this file is built with
// -ffp-contract=off, so each product and sum rounds as written), the merge
// of the groups, and the choice of kernel at run time.
#include "ops/attend_run.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "dsv4/error.h"

namespace dsv4::attn_run {
namespace {

// vec::exp8 for one lane, op for op: the same clamp, rounding, fused
// multiply-adds and exponent bits, so the kernels' probabilities agree.
float exp1(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365447504f;
  const bool under = x < lo;
  x = x < hi ? x : hi;  // _mm256_min_ps(x, hi)
  x = x > lo ? x : lo;  // _mm256_max_ps(x, lo)
  const float n = std::nearbyint(x * 1.44269504088896341f);
  x = std::fma(-n, 0.693359375f, x);
  x = std::fma(-n, -2.12194440e-4f, x);
  float p = 1.9875691500e-4f;
  p = std::fma(p, x, 1.3981999507e-3f);
  p = std::fma(p, x, 8.3334519073e-3f);
  p = std::fma(p, x, 4.1665795894e-2f);
  p = std::fma(p, x, 1.6666665459e-1f);
  p = std::fma(p, x, 5.0000001201e-1f);
  p = std::fma(p, x * x, x + 1.0f);
  const float e = std::bit_cast<float>(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return under ? 0.0f : p * e;
}

bool cpu_avx512f() {
#if defined(__x86_64__) && defined(__AVX2__)
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
#else
  return false;
#endif
}

}  // namespace

int64_t padded_heads(int64_t heads) { return (heads + kLanes - 1) / kLanes * kLanes; }

size_t query_floats(int64_t heads, int64_t dim) { return static_cast<size_t>(dim * padded_heads(heads)); }

size_t scratch_floats(const Run& r) {
  const int64_t hp = padded_heads(r.heads);
  return static_cast<size_t>(r.n * hp + kLanes + 3 * hp + r.n * 64 + kLanes);
}

void start(int64_t heads, int64_t dim, float* o, float* m, float* l) {
  std::fill(o, o + heads * dim, 0.0f);
  std::fill(m, m + heads, -std::numeric_limits<float>::infinity());
  std::fill(l, l + heads, 0.0f);
}

void transpose_scalar(const float* q, int64_t heads, int64_t dim, float* qt) {
  const int64_t hp = padded_heads(heads);
  for (int64_t d = 0; d < dim; ++d)
    for (int64_t h = 0; h < hp; ++h) qt[d * hp + h] = h < heads ? q[h * dim + d] : 0.0f;
}

void pv_scalar(const Run& r, const float* p, const float* alpha, int64_t d0, int64_t d1, float* o) {
  const int64_t hp = padded_heads(r.heads);
  for (int64_t h = 0; h < r.heads; ++h) {
    float* oh = o + h * r.dim;
    for (int64_t d = d0; d < d1; ++d) oh[d] = r.fresh ? 0.0f : oh[d] * alpha[h];
    for (int64_t k = 0; k < r.n; ++k) {
      const float pk = p[k * hp + h], *v = r.rows[k];
      for (int64_t d = d0; d < d1; ++d) oh[d] = std::fma(pk, v[d], oh[d]);
    }
  }
}

void attend_scalar(const Run& r, float* scratch, float* o, float* m, float* l) {
  const int64_t hp = padded_heads(r.heads), dim = r.dim;
  float *x = scratch, *alpha = x + r.n * hp + kLanes + 2 * hp;  // the SIMD kernels' layout
  for (int64_t k = 0; k < r.n; ++k) {                           // heads innermost: the loops vectorise
    float* xk = x + k * hp;
    std::fill(xk, xk + hp, 0.0f);
    for (int64_t d = 0; d < dim; ++d) {
      const float kd = r.rows[k][d];
      for (int64_t h = 0; h < hp; ++h) xk[h] = std::fma(r.qt[d * hp + h], kd, xk[h]);
    }
    for (int64_t h = 0; h < hp; ++h) xk[h] *= r.scale;
  }
  for (int64_t h = 0; h < r.heads; ++h) {
    const float m0 = r.fresh ? -std::numeric_limits<float>::infinity() : m[h], l0 = r.fresh ? 0.0f : l[h];
    float mh = m0, s = 0.0f;
    for (int64_t k = 0; k < r.n; ++k) mh = mh > x[k * hp + h] ? mh : x[k * hp + h];
    alpha[h] = exp1(m0 - mh);
    for (int64_t k = 0; k < r.n; ++k) s += x[k * hp + h] = exp1(x[k * hp + h] - mh);
    m[h] = mh, l[h] = l0 * alpha[h] + s;
  }
  pv_scalar(r, x, alpha, 0, dim, o);
}

void merge(const Parts& g, const float* sinks, int64_t h_begin, int64_t h_end, float* o) {
  const int64_t hn = g.heads, dim = g.dim;
  thread_local std::vector<float> mx, den;
  mx.assign(sinks + h_begin, sinks + h_end);
  den.resize(static_cast<size_t>(h_end - h_begin));
  for (int64_t s = 0; s < g.groups; ++s)
    for (int64_t h = h_begin; h < h_end; ++h) {
      float& x = mx[h - h_begin];
      x = x > g.m[s * hn + h] ? x : g.m[s * hn + h];
    }
  for (int64_t h = h_begin; h < h_end; ++h) den[h - h_begin] = exp1(sinks[h] - mx[h - h_begin]);
  for (int64_t s = 0; s < g.groups; ++s)
    for (int64_t h = h_begin; h < h_end; ++h)
      den[h - h_begin] += exp1(g.m[s * hn + h] - mx[h - h_begin]) * g.l[s * hn + h];
  std::fill(o + h_begin * dim, o + h_end * dim, 0.0f);
  for (int64_t s = 0; s < g.groups; ++s)  // a group's heads are contiguous: the parts stream in order
    for (int64_t h = h_begin; h < h_end; ++h) {
      const float w = exp1(g.m[s * hn + h] - mx[h - h_begin]) / den[h - h_begin];
      const float* part = g.o + (s * hn + h) * dim;
      float* oh = o + h * dim;
      for (int64_t d = 0; d < dim; ++d) oh[d] += w * part[d];  // dims innermost: the loop vectorises
    }
}

bool available(Kernel k) {
  switch (k) {
    case Kernel::scalar: return true;
#if defined(__AVX2__) && defined(__FMA__)
    case Kernel::avx2: return true;
#else
    case Kernel::avx2: return false;
#endif
    case Kernel::avx512: return cpu_avx512f();
  }
  return false;
}

void transpose_query(const float* q, int64_t heads, int64_t dim, float* qt) {
  if (available(Kernel::avx512) && transpose_avx512(q, heads, dim, qt)) return;
  if (transpose_avx2(q, heads, dim, qt)) return;
  transpose_scalar(q, heads, dim, qt);
}

bool attend(Kernel k, const Run& r, float* scratch, float* o, float* m, float* l) {
  if (!available(k)) return false;
  if (r.n == 0) {
    if (r.fresh) start(r.heads, r.dim, o, m, l);
    return true;
  }
  switch (k) {
    case Kernel::scalar: attend_scalar(r, scratch, o, m, l); return true;
    case Kernel::avx2: return attend_avx2(r, scratch, o, m, l);
    case Kernel::avx512: return attend_avx512(r, scratch, o, m, l);
  }
  return false;
}

void attend(const Run& r, float* o, float* m, float* l) {
  thread_local std::vector<float> scratch;
  scratch.resize(scratch_floats(r) + kLanes);
  float* s = scratch.data();  // on a cache line: the kernels' vector loads then never split one
  s += (kLanes - reinterpret_cast<uintptr_t>(s) / sizeof(float) % kLanes) % kLanes;
  for (Kernel k : {Kernel::avx512, Kernel::avx2, Kernel::scalar})
    if (attend(k, r, s, o, m, l)) return;
  fail("attend_run: no kernel ran");  // unreachable: the scalar kernel always runs
}

}  // namespace dsv4::attn_run
