// Per-sequence, per-layer decode state: what a layer must remember between
// chunks (spec: "Decoding and chunked prefill"). See docs/decode.md.
//
// Contents and heap size (floats × 4 bytes) after `pos` tokens, with
// D = head_dim, W = sliding_window, D_I = index_head_dim:
//   sliding: window ring                         (W-1)·D
//   HCA:     window + compressor (rate m')       (W-1)·D + 2·m'·D            + floor(pos/m')·D
//            (pending C, Z: m'·D each; entries)
//   CSA:     window + main compressor (rate m)   (W-1)·D + 2·m·2D + 2·m·D    + floor(pos/m)·D
//            + indexer compressor (rate m)               + 2·m·2D_I + 2·m·D_I + floor(pos/m)·D_I
//            (pending C, Z: m rows of both series, 2·width each; series-A prev
//            C, Z+B: m·width each; entries)
// In deployment numerics (docs/numerics.md) window rows and entries are stored
// in the spec's formats instead of fp32: a window row or main entry is
// kv_row_bytes = (D-R) + 2R + ceil((D-R)/64) bytes padded to a multiple of 8
// (584 at V4 dims), an indexer key index_row_bytes = D_I/2 + D_I/32 (68); the
// compressors' pending and series-A rows stay fp32 (they are pooled later).
// state_bytes() computes this. bytes() reports the capacity actually held,
// which can exceed it while the entry arrays grow geometrically (at most ~2×
// for the entries); a clone() or a load_state() holds exactly state_bytes().
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dsv4/config.h"

namespace dsv4 {

// One compressor (the CSA/HCA main one, or the CSA indexer's).
struct CompressorState {
  int64_t in_width = 0;        // channels of C and Z per token (2·width if overlapping)
  int64_t width = 0;           // channels of an emitted entry
  bool overlapping = false;    // CSA-style two-series pooling
  int64_t pending = 0;         // tokens of the incomplete window (< rate)
  std::vector<float> pend_c;   // [rate, in_width]  C rows of the incomplete window
  std::vector<float> pend_z;   // [rate, in_width]  Z rows (without bias)
  bool has_prev = false;       // overlapping: series A of the last complete window held
  std::vector<float> prev_c;   // [rate, width]     its series-A C
  std::vector<float> prev_zb;  // [rate, width]     its series-A Z + B
  int64_t emitted = 0;         // entries emitted so far
  std::vector<float> entries;  // [emitted, width]  grows amortised O(1) per entry (reference numerics)
  size_t row_bytes = 0;        // deployment numerics: bytes of a stored entry (0: entries are fp32)
  std::vector<uint8_t> coded;  // [emitted, row_bytes] entries in the deployment format (`entries` stays empty)
};

class LayerState {
 public:
  LayerState() = default;  // an empty shell; use Layer::new_state()
  LayerState(const Config& c, LayerType t, Numerics n = Numerics::reference);

  int64_t position() const { return pos_; }  // tokens consumed so far
  LayerType type() const { return type_; }
  Numerics numerics() const { return numerics_; }
  // Back to position 0, equivalent to a new state; keeps the allocated
  // buffers (bytes() unchanged) so a serving slot can be reused without
  // reallocating. Assign Layer::new_state() to release the memory instead.
  void reset();
  // An independent copy (fork a shared prefix: continue both with different tokens).
  LayerState clone() const { return *this; }
  size_t bytes() const;  // heap bytes held by this state (capacity, see above)
  // True if this state has the shapes of a (c, t, n) layer's state.
  bool fits(const Config& c, LayerType t, Numerics n = Numerics::reference) const;

  // Window ring: the last min(pos, W-1) kv vectors; slot of position p is p % (W-1).
  // fp32 rows in window() (reference numerics) or kv rows of window_row_bytes()
  // in window_coded() (deployment numerics; window() is then empty).
  int64_t window_slots() const { return window_slots_; }
  int64_t head_dim() const { return head_dim_; }
  std::vector<float>& window() { return window_; }
  const std::vector<float>& window() const { return window_; }
  size_t window_row_bytes() const { return window_row_bytes_; }
  std::vector<uint8_t>& window_coded() { return window_coded_; }
  const std::vector<uint8_t>& window_coded() const { return window_coded_; }
  CompressorState& compressor() { return comp_; }
  const CompressorState& compressor() const { return comp_; }
  CompressorState& indexer() { return index_; }
  const CompressorState& indexer() const { return index_; }
  void advance(int64_t n) { pos_ += n; }

 private:
  friend void save_state(const LayerState&, const Config&, const std::filesystem::path&);
  friend LayerState load_state(const Config&, LayerType, const std::filesystem::path&, Numerics);
  LayerType type_ = LayerType::sliding;
  Numerics numerics_ = Numerics::reference;
  int64_t pos_ = 0;
  int64_t window_slots_ = 0;
  int64_t head_dim_ = 0;
  std::vector<float> window_;  // [W-1, D]
  size_t window_row_bytes_ = 0;
  std::vector<uint8_t> window_coded_;  // [W-1, window_row_bytes_]
  CompressorState comp_;
  CompressorState index_;
};

// Heap bytes of a tightly held (c, t, n) state after `tokens` tokens (formula above).
size_t state_bytes(const Config& c, LayerType t, int64_t tokens, Numerics n = Numerics::reference);

// Writes the state of a (c, state.type()) layer to `path` atomically (a
// temporary file in the same folder, then rename). Format: docs/decode.md.
// Throws dsv4::Error if the state does not fit the config or on I/O errors.
void save_state(const LayerState& state, const Config& c, const std::filesystem::path& path);
// Reads a state saved by save_state for a (c, t, n) layer. Throws dsv4::Error
// naming the file and the problem: unreadable, truncated, bad magic or
// version, checksum mismatch, another layer type, config or numerics,
// inconsistent fields.
LayerState load_state(const Config& c, LayerType t, const std::filesystem::path& path,
                      Numerics n = Numerics::reference);

}  // namespace dsv4
