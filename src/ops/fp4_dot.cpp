// Integer FP4 indexer scores (ops/fp4_dot.h): the query's integer form, the
// scalar kernel, and the choice of kernel (the AVX2 and AVX-512 VNNI kernels
// are fp4_dot_avx2.cpp and fp4_dot_avx512.cpp).
#include "ops/fp4_dot.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "dsv4/error.h"
#include "ops/quant.h"

namespace dsv4::fp4dot {
namespace {

constexpr int64_t kBlock = quant::kFp4Block;
static_assert(kMaxBlocks * kBlock == kMaxDim);

// 2·E2M1 of a nibble code (sign in bit 3).
constexpr int8_t kTwice[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// Blocks b and b+1 of a head combined, then the pairs left to right.
float combine(const float* f, int64_t blocks) {
  float dot = blocks > 1 ? f[0] + f[1] : f[0];
  for (int64_t b = 2; b < blocks; b += 2) dot += b + 1 < blocks ? f[b] + f[b + 1] : f[b];
  return dot;
}

float dot_scalar(const Query& q, int64_t h, const uint8_t* key) {
  int32_t sums[kMaxBlocks] = {};
  float f[kMaxBlocks] = {};
  block_sums(q, h, key, sums);
  const uint8_t* scales = key + (q.dim + 1) / 2;
  for (int64_t b = 0; b < q.blocks; ++b)
    f[b] = static_cast<float>(sums[b]) * (q.scale[h * q.blocks + b] * key_scale(scales[b]));
  return combine(f, q.blocks);
}

// T of head h (ops/fp4_dot.h): the block sums at their exponents above the head's and the key's smallest.
int64_t exact_dot(const Query& q, int64_t h, const uint8_t* key, const uint8_t* scales, uint8_t smallest) {
  int32_t sums[kMaxBlocks] = {};
  block_sums(q, h, key, sums);
  int64_t t = 0;
  for (int64_t b = 0; b < q.blocks; ++b)
    t += int64_t{sums[b]} * (int64_t{1} << (q.shift[h * q.blocks + b] + scales[b] - smallest));
  return t;
}

float score_scalar(const Query& q, const float* a, const uint8_t* key) {
  const uint8_t* scales = key + (q.dim + 1) / 2;
  const auto [lo, hi] = std::minmax_element(scales, scales + q.blocks);
  const bool exact = q.max_shift + (*hi - *lo) <= kExactSpread;
  float p[8] = {};
  for (int64_t h = 0; h < q.heads; ++h) {
    float& lane = p[kLane[h % 8]];
    if (exact)
      lane = std::fma(a[h] * q.base[h], std::max(static_cast<float>(exact_dot(q, h, key, scales, *lo)), 0.0f), lane);
    else
      lane = std::fma(a[h], std::max(dot_scalar(q, h, key), 0.0f), lane);
  }
  const float s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
  return exact ? s * key_scale(*lo) : s;
}

// The AVX-512 kernel's query form (ops/fp4_dot.h), where the shifts are small enough.
void fold(Query& q) {
  q.folded.clear(), q.folded_offset.clear();
  if (q.max_shift > kFoldShift) return;
  q.folded.resize(q.codes.size());
  q.folded_offset.resize(q.offset.size());
  for (int64_t h = 0; h < q.heads; ++h)
    for (int64_t b = 0; b < q.blocks; ++b) {
      int32_t sum = 0;
      for (int64_t i = b * kBlock; i < std::min(q.dim, (b + 1) * kBlock); ++i)
        sum += q.folded[h * q.dim + i] = static_cast<int8_t>(q.codes[h * q.dim + i] * (1 << q.shift[h * q.blocks + b]));
      q.folded_offset[h * q.blocks + b] = 12 * sum;
    }
}

}  // namespace

float key_scale(uint8_t byte) {  // 2^(byte - 127); byte 0 is the fp32 subnormal 2^-127
  return std::bit_cast<float>(byte ? static_cast<uint32_t>(byte) << 23 : 0x00400000u);
}

void encode_query(const float* x, int64_t heads, int64_t dim, Query& q) {
  q.heads = heads, q.dim = dim, q.blocks = (dim + kBlock - 1) / kBlock;
  if (dim > kMaxDim) fail("fp4 indexer: index_head_dim " + std::to_string(dim) + " over " + std::to_string(kMaxDim));
  q.codes.resize(static_cast<size_t>(heads * dim));
  q.scale.resize(static_cast<size_t>(heads * q.blocks));
  q.offset.resize(static_cast<size_t>(heads * q.blocks));
  q.shift.assign(static_cast<size_t>(heads * q.blocks), 0);
  q.base.resize(static_cast<size_t>(heads));
  q.max_shift = 0;
  uint8_t codes[kBlock], bytes[kMaxBlocks];
  bool nonzero[kMaxBlocks];
  for (int64_t h = 0; h < heads; ++h) {
    int smallest = 256;  // over the blocks not all zero (their sums are 0 at any shift)
    for (int64_t b = 0; b < q.blocks; ++b) {
      // Re-encoding an FP4-rounded block is exact: its values are E2M1 times the new power-of-two scale.
      const float* v = x + h * dim + b * kBlock;
      const int64_t len = std::min(kBlock, dim - b * kBlock);
      bytes[b] = quant::fp4_block_encode(v, len, codes);
      q.scale[h * q.blocks + b] = key_scale(bytes[b]) * 0.25f;
      int32_t sum = 0;
      nonzero[b] = false;
      for (int64_t i = 0; i < len; ++i) {
        sum += q.codes[h * dim + b * kBlock + i] = kTwice[codes[i]];
        nonzero[b] |= kTwice[codes[i]] != 0;
      }
      q.offset[h * q.blocks + b] = 12 * sum;
      if (nonzero[b]) smallest = std::min<int>(smallest, bytes[b]);
    }
    q.base[h] = smallest < 256 ? key_scale(static_cast<uint8_t>(smallest)) * 0.25f : q.scale[h * q.blocks];
    for (int64_t b = 0; b < q.blocks; ++b)
      if (nonzero[b]) q.max_shift = std::max(q.max_shift, q.shift[h * q.blocks + b] = bytes[b] - smallest);
  }
  fold(q);
  avx2_layout(q);
}

void block_sums(const Query& q, int64_t h, const uint8_t* key, int32_t* sums) {
  const int8_t* c = &q.codes[h * q.dim];
  for (int64_t b = 0; b < q.blocks; ++b) {
    int32_t sum = 0;
    for (int64_t i = b * kBlock; i < std::min(q.dim, (b + 1) * kBlock); ++i)  // value i: byte i/2, low nibble if even
      sum += kTwice[(key[i / 2] >> (4 * (i & 1))) & 0xf] * c[i];
    sums[b] = sum;
  }
}

void scores_scalar(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s) {
  for (int64_t w = 0; w < n; ++w) s[w] = score_scalar(q, a, keys + static_cast<size_t>(w) * row_bytes);
}

bool avx512_vnni() {
#if defined(__x86_64__) && defined(__AVX2__)
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return yes;
#else
  return false;
#endif
}

void scores(const Query& q, const float* a, const uint8_t* keys, size_t row_bytes, int64_t n, float* s) {
  if (avx512_vnni() && scores_avx512(q, a, keys, row_bytes, n, s)) return;
  if (!scores_avx2(q, a, keys, row_bytes, n, s)) scores_scalar(q, a, keys, row_bytes, n, s);
}

}  // namespace dsv4::fp4dot
