// Checks on a decode state that load_state runs after parsing (state_check.cpp).
#pragma once
#include <filesystem>

#include "dsv4/config.h"
#include "dsv4/state.h"

namespace dsv4 {

// Throws dsv4::Error "state file '<path>': non-finite value in <row>: ..." naming
// the row (window row of position p, compressor/indexer pending or series-A row,
// entry or indexer key e) and the channel, if any value the state holds is NaN
// or Inf: fp32 rows, and deployment rows both as coded (E4M3 and E8M0 NaN
// codes, bf16 Inf/NaN) and as decoded.
void check_state_finite(const LayerState& s, const Config& c, const std::filesystem::path& path);

}  // namespace dsv4
