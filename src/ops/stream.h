// The read-bandwidth probe's inner loop (ops/roofline.cpp), shared with the
// kernels benchmark: XOR of words[0, n), in 256-bit loads where built for AVX2.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dsv4 {
uint64_t xor_stream(const uint64_t* p, size_t words);
}
