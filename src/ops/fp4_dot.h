// The deployment indexer's scores on the packed FP4 keys (ops/quant.h's
// index rows: E2M1 codes, two per byte, then one UE8M0 scale per block of 32).
// Twice an E2M1 value is an integer in [-12, 12], so the dot product of a
// query block with a key block is an exact integer (|sum| <= 32·144), scaled
// once per block by the two power-of-two scales: the keys are read as stored,
// never widened to fp32. Blocks combine in a fixed order ((b0 + b1) + (b2 + b3)
// + ...), heads into eight interleaved partial sums: the same arithmetic in
// the AVX2 and the scalar kernel, so their scores are bit-identical.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv4::fp4dot {

// The indexer query of one token in integer form (all heads).
struct Query {
  int64_t heads = 0, dim = 0, blocks = 0;
  std::vector<int8_t> codes;    // [heads, dim] 2·E2M1 values in [-12, 12]
  std::vector<float> scale;     // [heads, blocks] the block's scale / 4
  std::vector<int32_t> offset;  // [heads, blocks] 12·Σ codes (SIMD kernels read the keys offset by +12)
  // The AVX2 kernel's layout (D_I = 128, a multiple of 8 heads; fp4_dot_avx2.cpp):
  std::vector<int8_t> lanes;         // per 64 values, both blocks' even values, then odd ones
  std::vector<float> pair_scale;     // per pair of heads, 8 scales in the kernel's lane order
  std::vector<int32_t> pair_offset;  // offset in the same order
};

// q [heads, dim]: FP4-rounded values (every block exactly E2M1 times a power
// of two, as round_index_queries leaves them); blocks of 32 (the last may be shorter).
void encode_query(const float* q, int64_t heads, int64_t dim, Query& out);

// Σ_i (2q_i)(2k_i) over each block of head h against one key row: exact integers.
void block_sums(const Query& q, int64_t h, const uint8_t* key, int32_t* sums);

// Value of a UE8M0 scale byte of a key row.
float key_scale(uint8_t byte);

// For n keys (row stride row_bytes): s[w] = Σ_h a[h] · max(dot_h(w), 0),
// dot_h(w) = Σ over pairs of blocks of (sum_b · (scale_qb · scale_kb)); head h
// accumulates (fused multiply-add, in head order) into partial sum kLane[h % 8]
// (fp4_dot.cpp), the eight combined pairwise. Where the shape allows (D_I =
// 128, heads a multiple of 8): AVX-512 VNNI if the CPU has it, else AVX2 where
// built with it; else the scalar kernel.
void scores(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s);

// The scalar kernel alone (any shape; tests compare it with scores()).
void scores_scalar(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s);

// The AVX2 kernel (fp4_dot_avx2.cpp): false, computing nothing, where not built
// with AVX2 or the shape is not D_I = 128 with a multiple of 8 heads.
// avx2_layout fills Query::lanes/pair_* (encode_query calls it).
void avx2_layout(Query& q);
bool scores_avx2(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s);
// The AVX-512 VNNI kernel (fp4_dot_avx512.cpp), the same conditions, and only
// where avx512_vnni() (it runs those instructions; scores() asks first).
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
