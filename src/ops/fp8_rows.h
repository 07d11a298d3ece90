// The row-invariant kernel's FP8 inner loop on AVX-512 (fp8_rows_avx512.cpp):
// eight weight rows of E4M3 codes against one or two pre-scaled activation
// rows (ops/row_invariant.cpp). Each output keeps the 8-lane accumulator of
// the AVX2 micro-tile, lane l summing x[i]·v(w[i]) for i ≡ l (mod 8) in
// ascending i, one fused multiply-add each, v(c) = e4m3_times_2pow_m120(c);
// a 512-bit register holds the accumulators of two rows side by side, so the
// widening (sign-extend, shift, mask) and the multiply-add cost one
// instruction per 16 weights instead of per 8. Same operations, same order:
// bit-identical to the AVX2 micro-tile and to the scalar definition.
#pragma once
#include <cstdint>

namespace dsv4::fp8rows {

constexpr int kRows = 8;  // weight rows per call

// Whether the kernel is built and the CPU runs it (AVX-512 F; asked once).
bool avx512();

// acc[8·(r·ld + j) + l] += lane l of x[r]·v(rows[j]) over columns [i0, i1)
// (multiples of 8), r < m (1 or 2), j < kRows. next (kRows rows, or null):
// requested into the cache one line each per 64 columns of progress. False,
// computing nothing, where the kernel is not built or m is not 1 or 2.
bool micro(int m, const float* const* x, const uint8_t* const* rows, const uint8_t* const* next, int64_t i0, int64_t i1,
           float* acc, int64_t ld);

}  // namespace dsv4::fp8rows
