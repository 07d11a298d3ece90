// LayerState: allocation, reset, size accounting.
#include "dsv4/state.h"

#include <algorithm>

#include "ops/quant.h"

namespace dsv4 {
namespace {

struct Geometry {  // one compressor of a layer type (rate 0: none)
  int64_t rate = 0, width = 0;
  bool overlapping = false;
  size_t row_bytes = 0;  // deployment numerics: bytes of a stored entry
  int64_t in_width() const { return overlapping ? 2 * width : width; }
  // Bytes of `n` stored entries.
  size_t entry_bytes(int64_t n) const {
    return static_cast<size_t>(n) * (row_bytes ? row_bytes : static_cast<size_t>(width) * sizeof(float));
  }
};

bool deployed(Numerics n) { return n == Numerics::deployment; }
size_t kv_bytes(const Config& c, Numerics n) {
  return deployed(n) ? quant::kv_row_bytes(c.head_dim, c.qk_rope_head_dim) : 0;
}

Geometry main_shape(const Config& c, LayerType t, Numerics n) {
  const size_t rb = kv_bytes(c, n);
  if (t == LayerType::csa) return {c.compress_rate_csa, c.head_dim, true, rb};
  if (t == LayerType::hca) return {c.compress_rate_hca, c.head_dim, false, rb};
  return {};
}
Geometry indexer_shape(const Config& c, LayerType t, Numerics n) {
  const size_t rb = deployed(n) ? quant::index_row_bytes(c.index_head_dim) : 0;
  return t == LayerType::csa ? Geometry{c.compress_rate_csa, c.index_head_dim, true, rb} : Geometry{};
}

CompressorState make_compressor(const Geometry& sh) {
  CompressorState s;
  s.width = sh.width;
  s.overlapping = sh.overlapping;
  s.in_width = sh.in_width();
  s.row_bytes = sh.row_bytes;
  s.pend_c.assign(static_cast<size_t>(sh.rate * s.in_width), 0.0f);
  s.pend_z.assign(static_cast<size_t>(sh.rate * s.in_width), 0.0f);
  if (sh.overlapping) {
    s.prev_c.assign(static_cast<size_t>(sh.rate * sh.width), 0.0f);
    s.prev_zb.assign(static_cast<size_t>(sh.rate * sh.width), 0.0f);
  }
  return s;
}

bool compressor_fits(const CompressorState& s, const Geometry& sh) {
  const auto n = [](int64_t v) { return static_cast<size_t>(v); };
  const int64_t prev = sh.overlapping ? sh.rate * sh.width : 0;
  const bool stored = sh.row_bytes ? s.coded.size() >= sh.entry_bytes(s.emitted) && s.entries.empty()
                                   : s.entries.size() >= n(s.emitted * s.width) && s.coded.empty();
  return s.width == sh.width && s.overlapping == sh.overlapping && s.in_width == sh.in_width() &&
         s.row_bytes == sh.row_bytes && s.pend_c.size() == n(sh.rate * sh.in_width()) &&
         s.pend_z.size() == s.pend_c.size() && s.prev_c.size() == n(prev) && s.prev_zb.size() == n(prev) &&
         s.pending >= 0 && s.pending < std::max<int64_t>(sh.rate, 1) && s.emitted >= 0 && stored;
}

// Pending C/Z, prev C/Z+B (fp32), and the entries of `tokens` tokens.
size_t compressor_bytes(const Geometry& sh, int64_t tokens) {
  if (sh.rate == 0) return 0;
  const int64_t prev = sh.overlapping ? 2 * sh.rate * sh.width : 0;
  return static_cast<size_t>(2 * sh.rate * sh.in_width() + prev) * sizeof(float) + sh.entry_bytes(tokens / sh.rate);
}

template <class T>
size_t held(const std::vector<T>& v) {
  return v.capacity() * sizeof(T);
}

size_t compressor_bytes(const CompressorState& s) {
  return held(s.pend_c) + held(s.pend_z) + held(s.prev_c) + held(s.prev_zb) + held(s.entries) + held(s.coded);
}

}  // namespace

LayerState::LayerState(const Config& c, LayerType t, Numerics n)
    : type_(t),
      numerics_(n),
      window_slots_(c.sliding_window - 1),
      head_dim_(c.head_dim),
      window_row_bytes_(kv_bytes(c, n)) {
  if (deployed(n))
    window_coded_.assign(static_cast<size_t>(window_slots_) * window_row_bytes_, 0);
  else
    window_.assign(static_cast<size_t>(window_slots_ * head_dim_), 0.0f);
  comp_ = make_compressor(main_shape(c, t, n));
  index_ = make_compressor(indexer_shape(c, t, n));
}

void LayerState::reset() {
  pos_ = 0;
  for (CompressorState* s : {&comp_, &index_}) {
    s->pending = 0;
    s->has_prev = false;
    s->emitted = 0;
    s->entries.clear();
    s->coded.clear();
  }
}

size_t LayerState::bytes() const {
  return held(window_) + held(window_coded_) + compressor_bytes(comp_) + compressor_bytes(index_);
}

bool LayerState::fits(const Config& c, LayerType t, Numerics n) const {
  const size_t slots = static_cast<size_t>(c.sliding_window - 1), rb = kv_bytes(c, n);
  const bool window = rb ? window_coded_.size() == slots * rb && window_.empty()
                         : window_.size() == slots * static_cast<size_t>(c.head_dim) && window_coded_.empty();
  return type_ == t && numerics_ == n && window_slots_ == c.sliding_window - 1 && head_dim_ == c.head_dim &&
         window_row_bytes_ == rb && pos_ >= 0 && window && compressor_fits(comp_, main_shape(c, t, n)) &&
         compressor_fits(index_, indexer_shape(c, t, n));
}

size_t state_bytes(const Config& c, LayerType t, int64_t tokens, Numerics n) {
  const size_t slots = static_cast<size_t>(c.sliding_window - 1);
  const size_t window = deployed(n) ? slots * kv_bytes(c, n) : slots * c.head_dim * sizeof(float);
  return window + compressor_bytes(main_shape(c, t, n), tokens) + compressor_bytes(indexer_shape(c, t, n), tokens);
}

}  // namespace dsv4
