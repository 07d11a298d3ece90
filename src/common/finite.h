// Checks that inputs hold finite numbers.
#pragma once
#include <cstdint>
#include <string>

namespace dsv4 {

// Throws naming `what` if x holds a NaN or an infinity (how many, and the first's index).
void check_finite(const float* x, int64_t n, const std::string& what);

}  // namespace dsv4
