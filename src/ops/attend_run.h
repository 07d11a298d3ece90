// One flash-decoding run (pipeline/attend_split.cpp): one query's H heads
// against n shared keys (MQA: key k's row is also its value), fused — the
// logits of all heads, per head the max and the sum of exponentials, and the
// unnormalised P·V — in cache-resident layouts instead of two small GEMMs
// (which pay their packing per call). A run continues a running state
// (o [H, D], m [H], l [H]; start() sets 0, -inf, 0), so a group of runs is
// merged online, flash-attention style, in cache. Per head h, for the run's
// keys k = 0 .. n-1, the order is fixed and lane-wise, so the scalar, AVX2
// and AVX-512 kernels give the same bits:
//   a       = fma(qt[d][h], K[k][d], a)   for d = 0 .. D-1, from a = 0
//   x[k]    = a · scale
//   m'      = max over k in key order, from m (m' > x ? m' : x)
//   α       = exp(m - m')                 (0 while m = -inf)
//   p[k]    = exp(x[k] - m')              (vec::exp8's Cephes polynomial, op for op)
//   s       = s + p[k]                    in key order, from 0
//   l       = l · α + s,  m = m'
//   o[h][d] = o[h][d] · α, then fma(p[k], V[k][d], o) for k = 0 .. n-1
// The kernels hold heads in the vector lanes for the logits and the softmax
// (the query transposed once per group to qt [D, H'], H' = H rounded up to
// 16: no horizontal sums) and dims in the lanes for P·V (the rows as stored).
// merge() then combines the groups' states with the sink (its order below).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dsv4::attn_run {

constexpr int64_t kLanes = 16;  // heads are padded to a multiple of this in the scratch

struct Run {
  const float* qt = nullptr;  // the query transposed: [dim, padded_heads(heads)], zero past heads
  int64_t heads = 0, dim = 0;
  float scale = 1.0f;
  const float* const* rows = nullptr;  // rows[k], k < n: key and value k, dim floats each
  int64_t n = 0;
  bool fresh = false;  // the state is start()'s, so o, m, l are only written (the same bits, nothing read)
};

enum class Kernel { scalar, avx2, avx512 };

// The heads' padded width H', and the floats of qt.
int64_t padded_heads(int64_t heads);
size_t query_floats(int64_t heads, int64_t dim);
// qt [dim, H'] from q [heads, dim] (an exact copy: every kernel's gives the
// same bits), with the fastest transposition this CPU runs.
void transpose_query(const float* q, int64_t heads, int64_t dim, float* qt);

// Floats of scratch a kernel needs for a run: the logits, the padded state
// and a slice of the rows (P·V reads it packed).
size_t scratch_floats(const Run& r);

// The state before a group's first run: o = 0, m = -inf, l = 0.
void start(int64_t heads, int64_t dim, float* o, float* m, float* l);
// o, m, l continued over the run's keys as above; the fastest kernel this
// CPU runs (thread_local scratch). n = 0 leaves the state as it is (fresh:
// start()'s).
void attend(const Run& r, float* o, float* m, float* l);

// One kernel (tests, benchmarks): false, computing nothing, where it is not
// built or this CPU lacks its instructions.
bool available(Kernel k);
bool attend(Kernel k, const Run& r, float* scratch, float* o, float* m, float* l);

// The groups' states merged with the sink, heads [h_begin, h_end) of o [H, D]
// (normalised). Per head, in group order g = 0 .. G-1 (products and sums
// rounded one by one, no fused multiply-add):
//   mx = max(sink, m_g ...)              (mx > m_g ? mx : m_g, from the sink)
//   w_g = exp(m_g - mx),  den = exp(sink - mx) + Σ_g w_g · l_g
//   o[h][d] = Σ_g (w_g / den) · o_g[h][d]   from 0
struct Parts {
  const float *o = nullptr, *m = nullptr, *l = nullptr;  // [G, H, D], [G, H], [G, H]
  int64_t groups = 0, heads = 0, dim = 0;
};
void merge(const Parts& parts, const float* sinks, int64_t h_begin, int64_t h_end, float* o);

// The kernels (attend_run.cpp, attend_run_avx2.cpp, attend_run_avx512.cpp);
// the SIMD ones return false where not built. n >= 1.
void attend_scalar(const Run& r, float* scratch, float* o, float* m, float* l);
bool attend_avx2(const Run& r, float* scratch, float* o, float* m, float* l);
bool attend_avx512(const Run& r, float* scratch, float* o, float* m, float* l);
void transpose_scalar(const float* q, int64_t heads, int64_t dim, float* qt);
bool transpose_avx2(const float* q, int64_t heads, int64_t dim, float* qt);
bool transpose_avx512(const float* q, int64_t heads, int64_t dim, float* qt);

// Shared by the kernels: P·V of dims [d0, d1) in the scalar order (the SIMD
// kernels' tail dims), from p [n, H'] and α [H'].
void pv_scalar(const Run& r, const float* p, const float* alpha, int64_t d0, int64_t d1, float* o);

}  // namespace dsv4::attn_run
