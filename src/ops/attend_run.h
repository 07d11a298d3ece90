// One flash-decoding run (pipeline/attend_split.cpp): one query's H heads
// against n shared keys (MQA: key k's row is also its value), fused — the
// logits of all heads, per head the max and the sum of exponentials, and the
// unnormalised P·V — in cache-resident layouts instead of two small GEMMs
// (which pay their packing per call). Per head h and key k, the order is fixed
// and lane-wise, so the scalar, AVX2 and AVX-512 kernels give the same bits:
//   a      = fma(q[h][d], K[k][d], a)   for d = 0 .. D-1, from a = 0
//   x[k]   = a · scale
//   m      = max over k in key order (from -inf; m > x ? m : x)
//   p[k]   = exp(x[k] - m)             (vec::exp8's Cephes polynomial, op for op)
//   l      = l + p[k]                  in key order, from 0
//   o[h][d] = fma(p[k], V[k][d], o)    for k = 0 .. n-1, from 0
// The kernels hold heads in the vector lanes for the logits and the softmax
// (the query transposed once per run to [D, H'], H' = H rounded up to 16: no
// horizontal sums) and dims in the lanes for P·V (the rows as stored).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dsv4::attn_run {

constexpr int64_t kLanes = 16;  // heads are padded to a multiple of this in the scratch

struct Run {
  const float* q = nullptr;  // [heads, dim]
  int64_t heads = 0, dim = 0;
  float scale = 1.0f;
  const float* const* rows = nullptr;  // rows[k], k < n: key and value k, dim floats each
  int64_t n = 0;
};

enum class Kernel { scalar, avx2, avx512 };

// Floats of scratch a kernel needs for a run: the transposed query, the
// logits, and a slice of the rows (P·V reads it packed).
size_t scratch_floats(const Run& r);

// o [heads, dim] = Σ_k p[h][k]·V[k] (unnormalised), m[h], l[h] as above; the
// fastest kernel this CPU runs (thread_local scratch). n = 0 gives o = 0,
// m = -inf, l = 0.
void attend(const Run& r, float* o, float* m, float* l);

// One kernel (tests, benchmarks): false, computing nothing, where it is not
// built or this CPU lacks its instructions.
bool available(Kernel k);
bool attend(Kernel k, const Run& r, float* scratch, float* o, float* m, float* l);

// The kernels (attend_run.cpp, attend_run_avx2.cpp, attend_run_avx512.cpp);
// the SIMD ones return false where not built. n >= 1.
void attend_scalar(const Run& r, float* scratch, float* o, float* m, float* l);
bool attend_avx2(const Run& r, float* scratch, float* o, float* m, float* l);
bool attend_avx512(const Run& r, float* scratch, float* o, float* m, float* l);

// Shared by the kernels: the heads' padded width H', and P·V of dims [d0, d1)
// in the scalar order (the SIMD kernels' tail dims). p is [n, H'].
int64_t padded_heads(int64_t heads);
void pv_scalar(const Run& r, const float* p, int64_t d0, int64_t d1, float* o);

}  // namespace dsv4::attn_run
