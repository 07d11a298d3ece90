#include "common/finite.h"

#include <cmath>

#include "dsv4/error.h"

namespace dsv4 {

void check_finite(const float* x, int64_t n, const std::string& what) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) {
      if (first < 0) first = i;
      ++bad;
    }
  if (bad)
    fail(what + ": " + std::to_string(bad) + " non-finite value(s), first at flat index " + std::to_string(first));
}

}  // namespace dsv4
