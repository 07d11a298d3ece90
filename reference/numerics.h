// Deployment numerics of the naive reference: official_numerics.md written out
// once with straight loops; the representable values are searched exhaustively
// (the fast path computes them from bits). Test-only, like the rest of reference/.
#pragma once
#include <cstdint>
#include <limits>

namespace dsv4::reference {

float ceil_pow2(float v);            // smallest power of two >= v (v > 0)
float e4m3_round(float v);           // nearest E4M3 value to clamp(v, ±448); ties to the even code
float e2m1_round(float v);           // nearest E2M1 value to clamp(v, ±6); ties to the even code
void hadamard(float* x, int64_t n);  // Sylvester butterflies, then times fp32(n^-1/2)

// The roundings of one forward in deployment numerics. `closest` records how
// near any rounded value came to a rounding decision (a midpoint between two
// representable values, or a scale's power-of-two step), relative to the size
// of the value's fp32 rounding error (`err`: per value; default its block's
// largest magnitude). Two fp32 implementations a few ulp apart may round such a
// value differently, so tests redraw those cases.
struct Rounder {
  double closest = std::numeric_limits<double>::infinity();
  void fp8_block(float* x, int64_t n, const float* err = nullptr);  // quantise-dequantise one block (any n)
  void fp4_block(float* x, int64_t n);
  void bf16(float* x, int64_t n, const float* err);
  // A window kv row or compressed entry of width d (after RMSNorm with `norm_weight`
  // and RoPE): fp8 blocks of 64 on [0, d - r), bf16 on the last r.
  void kv_row(float* x, int64_t d, int64_t r, const float* norm_weight);
  // An indexer key or query: Hadamard over all n, then fp4 blocks of 32.
  void index_vec(float* x, int64_t n);
};

}  // namespace dsv4::reference
