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
// which can exceed it while the entry arrays grow geometrically (by 1/8: at
// most ~1.125× for the entries); a clone() or a load_state() holds exactly state_bytes().
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dsv4/config.h"

namespace dsv4 {
namespace detail {
// Bytes in one block that grows without copying: from 1 MiB on its own
// anonymous mapping, grown with mremap (pages moved, not bytes; malloc and
// realloc below that, where mapping is refused, and off Linux), so a
// million-token store (~170 MB of FP8 entries, ~540 MB of fp32 ones) grows in
// well under a millisecond instead of 70 ms–1.5 s of copying and page faults
// (docs/performance.md, "State growth"). New bytes are zero.
class GrowBytes {
 public:
  GrowBytes() = default;
  GrowBytes(const GrowBytes& o);  // holds exactly o.size()
  GrowBytes(GrowBytes&& o) noexcept;
  GrowBytes& operator=(const GrowBytes& o);
  GrowBytes& operator=(GrowBytes&& o) noexcept;
  ~GrowBytes();
  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }
  size_t capacity() const { return cap_; }
  void reserve(size_t n);  // throws std::bad_alloc
  void resize(size_t n);   // bytes past the old size become zero
  void clear() { n_ = 0; }

 private:
  void release();
  uint8_t* p_ = nullptr;
  size_t n_ = 0, cap_ = 0;
  bool mapped_ = false;  // p_ is a mapping of cap_ bytes rounded up to pages
};
}  // namespace detail

// Rows of `width` values in the layer's numerics: fp32 (reference), or the
// deployment formats of docs/numerics.md — kv rows (window rows and main
// entries: FP8 E4M3 blocks of 64 + bf16 RoPE dims) or indexer keys
// (Hadamard-rotated, FP4 E2M1 blocks of 32). The stages store and read rows
// through it and never see the format; row i's bytes are at data() + i·row_bytes().
class RowStore {
 public:
  enum class Format : uint8_t { f32, kv_fp8, key_fp4 };
  RowStore() = default;
  RowStore(Format f, int64_t width, int64_t rope_dims);  // no rows yet

  Format format() const { return format_; }
  int64_t width() const { return width_; }
  int64_t rope_dims() const { return rope_; }
  size_t row_bytes() const { return row_bytes_; }  // 4·width for fp32
  int64_t rows() const { return rows_; }
  // Holds n rows (the first min(n, rows()) kept, new ones zero), growing
  // geometrically by 1/8; assign() zero-fills all n.
  void resize(int64_t n);
  void assign(int64_t n);
  // No rows; keeps the allocation.
  void clear() { resize(0); }
  // The same format and width as `like`, with n rows (kept allocation reused).
  void resize_like(const RowStore& like, int64_t n);

  // Stores x as row i. An indexer key is Hadamard-rotated in place first. If
  // `dq` is given it gets row i as read() returns it (the dequantised values).
  void put(int64_t i, float* x, float* dq = nullptr);
  // Rows [i, i + n) as fp32 [n, width] (decoded in parallel for many rows).
  void read(int64_t i, int64_t n, float* out) const;
  // Rows ids[0..n) as fp32 [n, width].
  void gather(const int32_t* ids, int64_t n, float* out) const;
  // Rows [0, n) as fp32: the rows themselves if the format is fp32, else decoded into buf.
  const float* rows_f32(int64_t n, std::vector<float>& buf) const;
  // Row j of `from` (same format and width) copied into row i, as stored.
  void copy_row(int64_t i, const RowStore& from, int64_t j);

  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  size_t capacity_bytes() const { return bytes_.capacity(); }
  // Same format and shape, and equal rows (fp32 rows compared as floats).
  bool operator==(const RowStore& o) const;

 private:
  Format format_ = Format::f32;
  int64_t width_ = 0, rope_ = 0, rows_ = 0;
  size_t row_bytes_ = 0;
  detail::GrowBytes bytes_;  // rows [rows, row_bytes]: fp32 or encoded
};

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
  RowStore entries;            // [emitted rows]    grows amortised O(1) per entry
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
  int64_t window_slots() const { return window_slots_; }
  int64_t head_dim() const { return head_dim_; }
  RowStore& window() { return window_; }
  const RowStore& window() const { return window_; }
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
  RowStore window_;  // [W-1 rows of D]
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

// A (c, t, n) decode state as after `tokens` tokens, built without a prefill
// (seeded; any thread count gives the same state): floor(tokens/rate) entries
// and indexer keys, the window's last min(tokens, W-1) rows, the compressors'
// pending and series-A rows, all with the shapes and formats of a prefilled
// state and values of its scale (rows sd 1 before the deployment rounding,
// pending rows sd 0.6). Decode from it reads and selects as much as from a
// prefilled state of that length; its outputs are not any input's.
LayerState random_state(const Config& c, LayerType t, int64_t tokens, uint64_t seed, Numerics n = Numerics::reference);

}  // namespace dsv4
