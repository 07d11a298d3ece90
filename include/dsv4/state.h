// Per-sequence, per-layer decode state: what a layer must remember between
// chunks (spec: "Decoding and chunked prefill").
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dsv4/config.h"

namespace dsv4 {

// One compressor (the CSA/HCA main one, or the CSA indexer's).
struct CompressorState {
  int64_t in_width = 0;       // channels of C and Z per token (2·width if overlapping)
  int64_t width = 0;          // channels of an emitted entry
  bool overlapping = false;   // CSA-style two-series pooling
  int64_t pending = 0;        // tokens of the incomplete window (< rate)
  std::vector<float> pend_c;  // [rate, in_width]  C rows of the incomplete window
  std::vector<float> pend_z;  // [rate, in_width]  Z rows (without bias)
  bool has_prev = false;      // overlapping: series A of the last complete window held
  std::vector<float> prev_c;  // [rate, width]     its series-A C
  std::vector<float> prev_zb; // [rate, width]     its series-A Z + B
  int64_t emitted = 0;        // entries emitted so far
  std::vector<float> entries; // [emitted, width]  grows amortised O(1) per entry
};

class LayerState {
 public:
  LayerState() = default;
  LayerState(const Config& c, LayerType t);

  int64_t position() const { return pos_; }  // tokens consumed so far
  LayerType type() const { return type_; }
  void reset();
  LayerState clone() const { return *this; }
  size_t bytes() const;  // heap bytes held by this state

  // Window ring: the last min(pos, W-1) kv vectors; slot of position p is p % (W-1).
  int64_t window_slots() const { return window_slots_; }
  int64_t head_dim() const { return head_dim_; }
  std::vector<float>& window() { return window_; }
  const std::vector<float>& window() const { return window_; }
  CompressorState& compressor() { return comp_; }
  const CompressorState& compressor() const { return comp_; }
  CompressorState& indexer() { return index_; }
  const CompressorState& indexer() const { return index_; }
  void advance(int64_t n) { pos_ += n; }

 private:
  friend void save_state(const LayerState&, const Config&, const std::filesystem::path&);
  friend LayerState load_state(const Config&, LayerType, const std::filesystem::path&);
  LayerType type_ = LayerType::sliding;
  int64_t pos_ = 0;
  int64_t window_slots_ = 0;
  int64_t head_dim_ = 0;
  std::vector<float> window_;  // [W-1, D]
  CompressorState comp_;
  CompressorState index_;
};

}  // namespace dsv4
