// Packed documents' boundaries (Layer::forward(x, cu_seqlens) and friends):
// the checks, and MaxText's per-token segment ids turned into boundaries.
#include <string>

#include "dsv4/error.h"
#include "dsv4/layer.h"

namespace dsv4 {

void check_cu_seqlens(std::span<const int64_t> cu, int64_t tokens) {
  if (cu.empty()) fail("cu_seqlens: empty; expected the boundaries {0, ..., " + std::to_string(tokens) + "}");
  if (cu.front() != 0) fail("cu_seqlens[0] = " + std::to_string(cu.front()) + ": the first boundary must be 0");
  for (size_t i = 1; i < cu.size(); ++i)
    if (cu[i] < cu[i - 1])
      fail("cu_seqlens[" + std::to_string(i) + "] = " + std::to_string(cu[i]) + " < cu_seqlens[" +
           std::to_string(i - 1) + "] = " + std::to_string(cu[i - 1]) + ": boundaries must not decrease");
  if (cu.back() != tokens)
    fail("cu_seqlens[" + std::to_string(cu.size() - 1) + "] = " + std::to_string(cu.back()) +
         ": the last boundary must be the packed input's length T = " + std::to_string(tokens));
}

std::vector<int64_t> cu_seqlens_from_segment_ids(std::span<const int64_t> ids) {
  std::vector<int64_t> cu{0};
  for (size_t t = 1; t < ids.size(); ++t) {
    if (ids[t] < ids[t - 1])
      fail("segment_ids[" + std::to_string(t) + "] = " + std::to_string(ids[t]) + " < segment_ids[" +
           std::to_string(t - 1) + "] = " + std::to_string(ids[t - 1]) +
           ": ids must not decrease (each document's tokens contiguous, an id never reused)");
    if (ids[t] != ids[t - 1]) cu.push_back(static_cast<int64_t>(t));
  }
  if (!ids.empty()) cu.push_back(static_cast<int64_t>(ids.size()));
  return cu;
}

}  // namespace dsv4
