// The row-invariant kernels (gemm_nt_rows*): decode steps and serving batches.
//
// Every element C[r, j] is one dot product in one fixed order, whatever the
// number of activation rows, their split over calls or the thread count:
// eight lanes, lane l summing x[i]·w[i] for i ≡ l (mod 8) in ascending i (one
// FMA each), the lanes added in a fixed tree, then the k mod 8 tail in order.
// That is what makes a batch of sequences equal separate calls bit for bit.
// Within the order, micro-tiles keep one accumulator per element in registers:
// 4 weight rows × 2 activation rows read in place, or 3 weight rows × 4
// activation rows for fp32/bf16/f16 rows shared by many activation rows. With
// more than two activation rows, the columns go in chunks that stay in L1 for
// all of them while the next chunk is prefetched (serving batches).
//
// FP8 rows: with a power-of-two block scale s, x·(v·s) = (x·2^120·s)·(v·2^-120)
// as real numbers, and v·2^-120 is three integer ops from the code
// (e4m3_times_2pow_m120 in common/dtype.h, subnormal codes included). So for a few activation rows the
// kernel pre-scales the activations once per 128x128 block and decodes codes in
// registers with no multiply (for serving batches too: measured faster than
// widening, the decode is three integer ops per 8 weights per 2 rows);
// products and sums are those of the dequantised fp32 weights, bit for bit.
// Otherwise (fp32 scales, activations that would overflow when scaled) it
// widens 3 rows × one column chunk at a time into L1, exactly, and runs the
// same order.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <vector>

#include "common/dtype.h"
#include "ops/blas.h"
#include "ops/vec.h"
#include "ops/weight_decode.h"

namespace dsv4 {
namespace {

// Micro-tiles (weight rows × activation rows): 4 × 2 when the rows decode in
// registers for one or two activation rows; 3 × 4 (12 accumulators, 3 weight
// vectors, 1 activation vector: the 16 registers) when many rows share them.
constexpr int kJ = 4;  // the most weight rows of a block
constexpr int kJMany = 3, kRMany = 4;
constexpr int64_t kChunk = 256;  // columns per pass when many activation rows share the weights
constexpr int64_t kDirect = 2;   // up to this many activation rows: one pass over whole rows

// Accumulators live in registers inside a micro-tile and as 8 floats in
// memory between column chunks.
inline float hsum8(const float* l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));  // the fixed lane tree
}

inline float madd(float a, float b, float c) {
#ifdef DSV4_AVX2
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// acc[r·ld + j] += the lanes of x[r]·w[j] over columns [i0, i1) (multiples of 8).
// `next` (J rows, or null): rows requested into the cache at the pace these
// are read, one line each per line of progress. Short rows (q_b's 1,024
// columns) otherwise stall at every block: the hardware prefetcher learns each
// new row's stream only after a few misses.
template <int J, int R, class Row>
void micro(const float* const* xp, const Row* wp, const Row* next, int64_t i0, int64_t i1, float* acc, int64_t ld) {
  const float* x[R];  // local copies: the pointers stay in registers
  Row w[J];
  for (int r = 0; r < R; ++r) x[r] = xp[r];
  for (int j = 0; j < J; ++j) w[j] = wp[j];
#ifdef DSV4_AVX2
  constexpr int64_t kLine = 64 / sizeof(*w[0].p);  // columns per cache line
  __m256 s[R][J];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) s[r][j] = _mm256_loadu_ps(acc + 8 * (r * ld + j));
  for (int64_t i = i0; i < i1; i += 8) {
    if (next && i % kLine == 0)
      for (int j = 0; j < J; ++j) _mm_prefetch(reinterpret_cast<const char*>(next[j].p + i), _MM_HINT_T0);
    __m256 wv[J];
    for (int j = 0; j < J; ++j) wv[j] = w[j].load8(i);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x[r] + i);
      for (int j = 0; j < J; ++j) s[r][j] = _mm256_fmadd_ps(xv, wv[j], s[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) _mm256_storeu_ps(acc + 8 * (r * ld + j), s[r][j]);
#else
  (void)next;
  for (int64_t i = i0; i < i1; i += 8)
    for (int l = 0; l < 8; ++l)
      for (int j = 0; j < J; ++j) {
        const float wl = w[j].at(i + l);
        for (int r = 0; r < R; ++r) acc[8 * (r * ld + j) + l] += x[r][i + l] * wl;
      }
#endif
}

// micro<nj, nr> for nj <= J, nr <= R.
template <int J, int R, class Row>
void micro_any(int nj, int nr, const float* const* x, const Row* w, const Row* next, int64_t i0, int64_t i1, float* acc,
               int64_t ld) {
  if constexpr (J > 1)
    if (nj < J) return micro_any<J - 1, R>(nj, nr, x, w, next, i0, i1, acc, ld);
  if constexpr (R > 1)
    if (nr < R) return micro_any<J, R - 1>(nj, nr, x, w, next, i0, i1, acc, ld);
  micro<J, R>(x, w, next, i0, i1, acc, ld);
}

// C[r, j] for m activation rows x[r] and nj weight rows, J × R micro-tiles.
// Rows::block(j, n, i0, i1) gives n weight rows usable over columns [i0, i1);
// Rows::at(j, i) one value (the tail). `chunk` columns per pass.
template <int J, int R, class Rows>
void tile(int64_t m, int64_t nj, int64_t k, const float* const* x, Rows& rows, int64_t chunk, float* c, int64_t ldc) {
  thread_local std::vector<float> buf;
  buf.assign(static_cast<size_t>(8 * m * nj), 0.0f);
  float* acc = buf.data();
  const int64_t k8 = k & ~int64_t{7};
  for (int64_t jb = 0; jb < nj; jb += J) {  // each weight row streamed start to end
    const int nb = static_cast<int>(std::min<int64_t>(J, nj - jb));
    for (int64_t i0 = 0; i0 < k8; i0 += chunk) {
      const int64_t i1 = std::min(k8, i0 + chunk);
      if (i1 < k8) rows.prefetch(jb, nb, i1, std::min(k8, i1 + chunk));  // DRAM behind the compute
      const auto w = rows.block(jb, nb, i0, i1);
      // One pass over whole rows of stored weights: the next block streams in behind this one.
      auto ahead = w;  // a copy (w is const)
      bool pace = false;
      if constexpr (Rows::kInPlace) {
        pace = chunk >= k8 && jb + J < nj;
        for (int q = 0; pace && q < J; ++q) ahead[size_t(q)] = rows.row(std::min<int64_t>(jb + J + q, nj - 1));
      }
      for (int64_t r = 0; r < m; r += R)
        micro_any<J, R>(nb, static_cast<int>(std::min<int64_t>(R, m - r)), x + r, w.data(),
                        pace ? ahead.data() : nullptr, i0, i1, acc + 8 * (r * nj + jb), nj);
    }
  }
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < nj; ++j) {
      float s = hsum8(acc + 8 * (r * nj + j));
      for (int64_t i = k8; i < k; ++i) s = madd(x[r][i], rows.at(j, i), s);
      c[r * ldc + j] = s;
    }
}

// Requests columns [i0, i1) of a stored row into the cache ahead of use.
template <class Row>
void prefetch_row(const Row& r, int64_t i0, int64_t i1) {
#ifdef DSV4_AVX2
  const char* p = reinterpret_cast<const char*>(r.p + i0);
  const char* end = reinterpret_cast<const char*>(r.p + i1);
  for (; p < end; p += 64) _mm_prefetch(p, _MM_HINT_T0);
#else
  (void)r, (void)i0, (void)i1;
#endif
}

// Stored rows read in place (fp32, bf16, f16 and pre-scaled FP8 codes).
template <class RowOf>
struct DirectRows {
  static constexpr bool kInPlace = true;  // rows are read where they are stored
  RowOf row_of;
  int64_t j0;
  auto row(int64_t j) const { return row_of(j0 + j); }  // row j0 + j
  auto block(int64_t jb, int n, int64_t, int64_t) const {
    std::array<decltype(row(0)), kJ> w{};
    for (int q = 0; q < n; ++q) w[size_t(q)] = row(jb + q);
    return w;
  }
  void prefetch(int64_t jb, int n, int64_t i0, int64_t i1) const {
    for (int q = 0; q < n; ++q) prefetch_row(row(jb + q), i0, i1);
  }
  float at(int64_t j, int64_t i) const { return row(j).at(i); }
};
template <class RowOf>
DirectRows(RowOf, int64_t) -> DirectRows<RowOf>;  // clang 14 (the TSan build) has no aggregate CTAD

// v·2^-120 from an E4M3 code: the 7 magnitude bits under the fp32 exponent
// field, the sign on top (fp32 subnormals for subnormal codes, exact).
struct Fp8BitsRow {
  const uint8_t* p;
#ifdef DSV4_AVX2
  __m256 load8(int64_t i) const {
    const __m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i)));
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(c, 20), _mm256_set1_epi32(int(0x87F00000u))));
  }
#endif
  float at(int64_t i) const { return e4m3_times_2pow_m120(p[i]); }
};

// Columns [i0, i0 + kChunk) of a row widened into an L1 buffer (i0 a multiple of kChunk).
struct ChunkRow {
  const float* p;
#ifdef DSV4_AVX2
  __m256 load8(int64_t i) const { return _mm256_loadu_ps(p + (i & (kChunk - 1))); }
#endif
  float at(int64_t i) const { return p[i & (kChunk - 1)]; }
};
static_assert((kChunk & (kChunk - 1)) == 0);

// FP8 rows widened (exactly: the dequantised weights) a block of rows × one
// chunk at a time: v·2^-120 times 2^120·s (mult, one product) for power-of-two scales,
// else through fp16 as Fp8Row does.
struct WidenedRows {
  static constexpr bool kInPlace = false;  // rows are widened into a buffer per chunk
  WeightRows b;
  int64_t j0;
  int64_t ld;
  float* wide;                        // [kJ, ld]: the block's rows over one chunk
  const float* mult;                  // per 128 columns, or null
  vec::Fp8Row row(int64_t j) const {  // row j0 + j as stored
    j += j0;
    return {static_cast<const uint8_t*>(b.data) + j * b.ld, b.scale + ((b.row_base + j) / 128) * b.scale_ld};
  }
  std::array<ChunkRow, kJ> block(int64_t jb, int n, int64_t i0, int64_t i1) const {
    std::array<ChunkRow, kJ> w{};
    for (int q = 0; q < n; ++q) {
      const vec::Fp8Row r = row(jb + q);
      float* out = wide + q * ld;
#ifdef DSV4_AVX2
      if (mult) {
        const Fp8BitsRow bits{r.p};
        for (int64_t i = i0; i < i1; i += 8)
          _mm256_storeu_ps(out + (i - i0), _mm256_mul_ps(bits.load8(i), _mm256_set1_ps(mult[i >> 7])));
      } else {
        for (int64_t i = i0; i < i1; i += 8) _mm256_storeu_ps(out + (i - i0), r.load8(i));
      }
#else
      for (int64_t i = i0; i < i1; ++i) out[i - i0] = r.at(i);
#endif
      w[size_t(q)] = {out};
    }
    return w;
  }
  void prefetch(int64_t jb, int n, int64_t i0, int64_t i1) const {
    for (int q = 0; q < n; ++q) prefetch_row(row(jb + q), i0, i1);
  }
  float at(int64_t j, int64_t i) const { return row(j).at(i); }
};

// mult[b] = 2^120 · scale per 128 columns; true if all are powers of two
// well inside the fp32 range (then scaling by them is exact).
bool pow2_multipliers(const float* scale, int64_t k, float* mult) {
  for (int64_t b = 0; b * 128 < k; ++b) {
    const float f = scale[b] * 0x1p120f;
    if ((std::bit_cast<uint32_t>(f) & 0x7FFFFFu) != 0 || !(f >= 0x1p-125f && f <= 0x1p125f)) return false;
    mult[b] = f;
  }
  return true;
}

// xs[r] = x[r] · mult per 128-column block, if every product is exact.
bool prescale(int64_t m, int64_t k, const float* a, int64_t lda, const float* mult, float* xs, int64_t ldx) {
  for (int64_t b = 0; b * 128 < k; ++b) {
    const float f = mult[b];
    const float inv = 1.0f / f;
    const int64_t end = std::min(k, 128 * (b + 1));
    bool exact = true;  // v · inv == x fails on overflow, lost subnormal bits, NaN
    for (int64_t r = 0; r < m; ++r) {
      const float* xr = a + r * lda;
      float* out = xs + r * ldx;
      int64_t i = 128 * b;
#ifdef DSV4_AVX2
      __m256 bad = _mm256_setzero_ps();
      for (; i + 8 <= end; i += 8) {
        const __m256 x = _mm256_loadu_ps(xr + i), v = _mm256_mul_ps(x, _mm256_set1_ps(f));
        _mm256_storeu_ps(out + i, v);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_mul_ps(v, _mm256_set1_ps(inv)), x, _CMP_NEQ_UQ));
      }
      exact &= _mm256_testz_ps(bad, bad) != 0;
#endif
      for (; i < end; ++i) {
        out[i] = xr[i] * f;
        exact &= out[i] * inv == xr[i];
      }
    }
    if (!exact) return false;
  }
  return true;
}

// Rows of a packed copy lie (k + 16) floats apart: rows of a power-of-two
// length would all map to the same L1 sets and evict each other.
int64_t padded(int64_t k) { return k + 16; }

// The m activation rows: in place for a few, else a packed copy.
const float* const* activations(int64_t m, int64_t k, const float* a, int64_t lda) {
  thread_local std::vector<const float*> x;
  thread_local std::vector<float> packed;
  x.resize(static_cast<size_t>(m));
  if (m > kDirect) packed.resize(static_cast<size_t>(m * padded(k)));
  for (int64_t r = 0; r < m; ++r) {
    if (m <= kDirect) {
      x[size_t(r)] = a + r * lda;
      continue;
    }
    std::copy_n(a + r * lda, k, packed.data() + r * padded(k));
    x[size_t(r)] = packed.data() + r * padded(k);
  }
  return x.data();
}

// Weight rows [j0, j1) of FP8 b, all in one 128-row scale block: codes decoded
// in registers against pre-scaled activations, or widened when that is not exact.
void fp8_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda, const WeightRows& b, float* c,
              int64_t ldc) {
  thread_local std::vector<float> mult, scaled, wide;
  mult.resize(static_cast<size_t>((k + 127) / 128));
  const bool pow2 = pow2_multipliers(b.scale + ((b.row_base + j0) / 128) * b.scale_ld, k, mult.data());
  if (pow2) {
    scaled.resize(static_cast<size_t>(m * padded(k)));
    if (prescale(m, k, a, lda, mult.data(), scaled.data(), padded(k))) {
      thread_local std::vector<const float*> x;
      x.resize(size_t(m));
      for (int64_t r = 0; r < m; ++r) x[size_t(r)] = scaled.data() + r * padded(k);
      const uint8_t* codes = static_cast<const uint8_t*>(b.data);
      DirectRows rows{[&](int64_t j) { return Fp8BitsRow{codes + j * b.ld}; }, j0};
      return tile<kJ, kDirect>(m, j1 - j0, k, x.data(), rows, m <= kDirect ? k : kChunk, c + j0, ldc);
    }
  }
  wide.resize(static_cast<size_t>(kJ * padded(kChunk)));
  WidenedRows rows{b, j0, padded(kChunk), wide.data(), pow2 ? mult.data() : nullptr};
  tile<kJMany, kRMany>(m, j1 - j0, k, activations(m, k, a, lda), rows, kChunk, c + j0, ldc);
}

template <class RowOf>
void direct_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda, RowOf row, float* c,
                 int64_t ldc) {
  DirectRows<RowOf> rows{row, j0};
  if (m <= kDirect) return tile<kJ, kDirect>(m, j1 - j0, k, activations(m, k, a, lda), rows, k, c + j0, ldc);
  tile<kJMany, kRMany>(m, j1 - j0, k, activations(m, k, a, lda), rows, kChunk, c + j0, ldc);
}

}  // namespace

void gemm_nt_rows_w_range(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                          const WeightRows& b, float* c, int64_t ldc) {
  if (m <= 0 || j1 <= j0) return;
  if (b.dtype != DType::F8_E4M3)
    return vec::with_rows(b, [&](auto row) { direct_rows(m, j0, j1, k, a, lda, row, c, ldc); });
  for (int64_t j = j0; j < j1;) {  // runs of rows that share a scale block
    const int64_t end = std::min(j1, j + 128 - (b.row_base + j) % 128);
    fp8_rows(m, j, end, k, a, lda, b, c, ldc);
    j = end;
  }
}

void gemm_nt_rows_w(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const WeightRows& b, float* c,
                    int64_t ldc) {
  const int64_t tiles = (n + kRowsPerTile - 1) / kRowsPerTile;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tiles; ++t)
    gemm_nt_rows_w_range(m, t * kRowsPerTile, std::min(n, (t + 1) * kRowsPerTile), k, a, lda, b, c, ldc);
}

void gemm_nt_rows(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc) {
  WeightRows w;
  w.data = b, w.ld = ldb;
  gemm_nt_rows_w(m, n, k, a, lda, w, c, ldc);
}

}  // namespace dsv4
