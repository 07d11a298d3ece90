// The deployment indexer's scores on the packed FP4 keys (ops/quant.h's
// index rows: E2M1 codes, two per byte, then one UE8M0 scale per block of 32).
// Twice an E2M1 value is an integer in [-12, 12], so the dot product of a
// query block with a key block is an exact integer (|sum| <= 32·144), scaled
// once per block by the two power-of-two scales: the keys are read as stored,
// never widened to fp32. Blocks combine in a fixed order (pairs of blocks,
// then the pairs left to right), the same in the AVX2 and the scalar kernel.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv4::fp4dot {

// The indexer query of one token in integer form (all heads).
struct Query {
  int64_t heads = 0, dim = 0, blocks = 0;
  std::vector<int8_t> codes;         // [heads, dim] 2·E2M1 values in [-12, 12]
  std::vector<float> scale;          // [heads, blocks] the block's scale / 4
  std::vector<int8_t> lanes;         // AVX2 order (dim 128): per 64 values, both blocks' even values, then odd ones
  std::vector<float> pair_scale;     // AVX2: per pair of heads, 8 scales in the kernel's lane order
  std::vector<int32_t> pair_offset;  // AVX2: 12·Σ codes per block (the keys are read offset by +12)
};

// q [heads, dim]: FP4-rounded values (every block exactly E2M1 times a power
// of two, as round_index_queries leaves them); blocks of 32 (the last may be shorter).
void encode_query(const float* q, int64_t heads, int64_t dim, Query& out);

// Σ_i (2q_i)(2k_i) over each block of head h against one key row: exact integers.
void block_sums(const Query& q, int64_t h, const uint8_t* key, int32_t* sums);

// Value of a UE8M0 scale byte of a key row.
float key_scale(uint8_t byte);

// For n keys (row stride row_bytes): s[w] = Σ_h a[h] · max(dot_h(w), 0),
// dot_h(w) = Σ over pairs of blocks of (sum_b · scale_qb · scale_kb); the sum
// over heads in eight interleaved partial sums combined pairwise (fp4_dot.cpp).
void scores(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s);

}  // namespace dsv4::fp4dot
