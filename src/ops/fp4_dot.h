// The deployment indexer's scores on the packed FP4 keys (ops/quant.h's
// index rows: E2M1 codes, two per byte, then one UE8M0 scale per block of 32).
// Twice an E2M1 value is an integer in [-12, 12], so the dot product of a
// query block with a key block is an exact integer (|sum| <= 32·144), and the
// block scales are powers of two: a head's dot product over all blocks is the
// integer T = Σ_b sum_b · 2^(shift_qb + shift_kb) (shifts: each block's
// exponent above the smallest of its row) times 2^(smallest query exponent +
// smallest key exponent) — exact, rounded once when T becomes fp32. The keys
// are read as stored, never widened to fp32. Heads go into eight interleaved
// partial sums; the key's smallest scale multiplies the combined sum. The
// scalar, AVX2 and AVX-512 kernels compute T exactly and then the same fp32
// operations, so their scores are bit-identical (exactness only needs integer
// sums: their order is free).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv4::fp4dot {

// The widest index head: 64 blocks of 32 (the kernels keep a head's block sums on the stack).
constexpr int64_t kMaxDim = 2048, kMaxBlocks = kMaxDim / 32;

// The indexer query of one token in integer form (all heads).
struct Query {
  int64_t heads = 0, dim = 0, blocks = 0;
  std::vector<int8_t> codes;    // [heads, dim] 2·E2M1 values in [-12, 12]
  std::vector<float> scale;     // [heads, blocks] the block's scale / 4
  std::vector<int32_t> offset;  // [heads, blocks] 12·Σ codes (SIMD kernels read the keys offset by +12)
  std::vector<int32_t> shift;   // [heads, blocks] block exponent − the head's smallest (0 for all-zero blocks)
  std::vector<float> base;      // [heads] the head's smallest block scale / 4 (over blocks not all zero)
  int32_t max_shift = 0;        // over all heads and blocks
  // The AVX-512 kernel's form (where max_shift <= kFoldShift): codes · 2^shift and 12·Σ of them per block.
  std::vector<int8_t> folded;
  std::vector<int32_t> folded_offset;
  // The AVX2 kernel's layout (D_I = 128, a multiple of 8 heads; fp4_dot_avx2.cpp):
  std::vector<int8_t> lanes;         // per 64 values, both blocks' even values, then odd ones
  std::vector<float> pair_scale;     // per pair of heads, 8 scales in the kernel's lane order
  std::vector<int32_t> pair_offset;  // offset in the same order
  std::vector<int32_t> pair_shift;   // shift in the same order
};

// q [heads, dim]: FP4-rounded values (every block exactly E2M1 times a power
// of two, as round_index_queries leaves them); blocks of 32 (the last may be shorter).
void encode_query(const float* q, int64_t heads, int64_t dim, Query& out);

// Σ_i (2q_i)(2k_i) over each block of head h against one key row: exact integers.
void block_sums(const Query& q, int64_t h, const uint8_t* key, int32_t* sums);

// Value of a UE8M0 scale byte of a key row.
float key_scale(uint8_t byte);

// For n keys (row stride row_bytes): s[w] = Σ_h a[h] · max(dot_h(w), 0). Where
// max_shift + the key's exponent spread <= kExactSpread (always, but for
// blocks of wildly different magnitude): head h adds fma(a[h] · base[h],
// max(fp32(T_h), 0), ·) (T_h: above, in 64-bit integers) in head order into
// partial sum kLane[h % 8]; the eight are combined pairwise, then multiplied
// by the key's smallest block scale. Else the per-block form: dot_h = Σ over
// pairs of blocks of (sum_b · (scale_qb · scale_kb)), fma(a[h], max(dot_h,
// 0), ·), the same lanes, no final multiply. Where the shape allows (D_I =
// 128, heads a multiple of 8): AVX-512 VNNI if the CPU has it, else AVX2
// where built with it; else the scalar kernel (the SIMD kernels hand it the
// keys their 32-bit sums cannot hold).
void scores(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s);
constexpr int32_t kExactSpread = 40;  // 64 blocks · 32·144 · 2^40 < 2^63
constexpr int32_t kFoldShift = 3;     // 12 · 2^3 fits a signed byte (the AVX-512 kernel's query form)
constexpr int32_t kSumShift = 16;     // 4 blocks · 32·144 · 2^16 < 2^31 (the SIMD kernels' 32-bit T)

// The scalar kernel alone (any shape; tests compare it with scores()).
void scores_scalar(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s);

// The AVX2 kernel (fp4_dot_avx2.cpp): false, computing nothing, where not built
// with AVX2 or the shape is not D_I = 128 with a multiple of 8 heads.
// avx2_layout fills Query::lanes/pair_* (encode_query calls it).
void avx2_layout(Query& q);
bool scores_avx2(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s);
// The AVX-512 VNNI kernel (fp4_dot_avx512.cpp), the same conditions and
// max_shift <= kFoldShift, and only where avx512_vnni() (it runs those
// instructions; scores() asks first).
bool avx512_vnni();
bool scores_avx512(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s);

// The int8 multiply-add peak of one thread, as the benchmarks' bounds price the
// deployment indexer: `iters` rounds of 16 independent vpdpbusd (64 byte
// multiply-adds each, AVX-512 VNNI) or 12 independent vpmaddubsw + vpaddw (32
// each, AVX2, the accumulation the AVX2 kernel needs); returns the multiply-adds
// done, 0 where not built or (vpdpbusd) not avx512_vnni().
double dpbusd_peak(int64_t iters);
double maddubs_peak(int64_t iters);

// Head h's partial sum (scores' fixed order); the eight are combined as
// ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)).
constexpr int kLane[8] = {0, 1, 4, 5, 2, 3, 6, 7};

}  // namespace dsv4::fp4dot
