// Deployment numerics (official_numerics.md): UE8M0 power-of-two scales, FP8
// E4M3 blocks of 64, FP4 E2M1 blocks of 32, the Walsh–Hadamard rotation, and
// the two row formats the decode state stores in that mode.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dsv4::quant {

constexpr int64_t kFp8Block = 64;  // values per E4M3 scale
constexpr int64_t kFp4Block = 32;  // values per E2M1 scale

// Exponent e of the smallest power of two 2^e >= v (v > 0), from the fp32 bits.
int ceil_pow2_exp(float v);
float ceil_pow2(float v);

uint8_t e2m1_encode(float x);  // clamps to ±6, nearest, ties to the even code; sign in bit 3
float e2m1_decode(uint8_t code);
float e4m3_decode(uint8_t code);  // table lookup of e4m3fn_to_f32

// One block each: codes[n] and its UE8M0 scale byte (returned).
uint8_t fp8_block_encode(const float* x, int64_t n, uint8_t* codes);
uint8_t fp4_block_encode(const float* x, int64_t n, uint8_t* codes);

// In place, n a power of two: Sylvester-order butterflies, then times fp32(n^-1/2).
void hadamard(float* x, int64_t n);

// Quantise-dequantise in place (fp8: blocks of 64; fp4: blocks of 32).
void fp8_qdq(float* x, int64_t n);
void fp4_qdq(float* x, int64_t n);

// Main row (window kv row / compressed entry) of width d whose last r dims carry RoPE:
//   (d - r) E4M3 codes | r bf16 (little-endian) | ceil((d - r)/64) scale bytes | zero pad to 8 bytes
// (V4: 448 + 128 + 7 + 1 = 584, FlashMLA's layout).
size_t kv_row_bytes(int64_t d, int64_t r);
// Encodes x into row; if `dq` is given, also writes the dequantised values there.
void kv_row_encode(const float* x, int64_t d, int64_t r, uint8_t* row, float* dq = nullptr);
// Decoding is exact: the AVX-512F kernel (quant_avx512.cpp, where the CPU has
// it; false where not built) and the scalar loop give the same values.
void kv_row_decode(const uint8_t* row, int64_t d, int64_t r, float* out);
void kv_row_decode_scalar(const uint8_t* row, int64_t d, int64_t r, float* out);
bool kv_row_decode_avx512(const uint8_t* row, int64_t d, int64_t r, float* out);

// Indexer key of width n (the Hadamard already applied):
//   ceil(n/2) bytes of E2M1 codes, two per byte (even index in the low nibble) | ceil(n/32) scale bytes
// (V4: 64 + 4 = 68).
size_t index_row_bytes(int64_t n);
void index_row_encode(const float* x, int64_t n, uint8_t* row, float* dq = nullptr);
void index_row_decode(const uint8_t* row, int64_t n, float* out);

}  // namespace dsv4::quant
