// LayerState: allocation, reset, size accounting.
#include "dsv4/state.h"

#include <algorithm>

namespace dsv4 {
namespace {

struct Geometry {  // one compressor of a layer type (rate 0: none)
  int64_t rate = 0, width = 0;
  bool overlapping = false;
  int64_t in_width() const { return overlapping ? 2 * width : width; }
};

Geometry main_shape(const Config& c, LayerType t) {
  if (t == LayerType::csa) return {c.compress_rate_csa, c.head_dim, true};
  if (t == LayerType::hca) return {c.compress_rate_hca, c.head_dim, false};
  return {};
}
Geometry indexer_shape(const Config& c, LayerType t) {
  return t == LayerType::csa ? Geometry{c.compress_rate_csa, c.index_head_dim, true} : Geometry{};
}

CompressorState make_compressor(const Geometry& sh) {
  CompressorState s;
  s.width = sh.width;
  s.overlapping = sh.overlapping;
  s.in_width = sh.in_width();
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
  return s.width == sh.width && s.overlapping == sh.overlapping && s.in_width == sh.in_width() &&
         s.pend_c.size() == n(sh.rate * sh.in_width()) && s.pend_z.size() == s.pend_c.size() &&
         s.prev_c.size() == n(prev) && s.prev_zb.size() == n(prev) && s.pending >= 0 &&
         s.pending < std::max<int64_t>(sh.rate, 1) && s.emitted >= 0 && s.entries.size() >= n(s.emitted * s.width);
}

// Pending C/Z, prev C/Z+B, and entries of `tokens` tokens.
size_t compressor_floats(const Geometry& sh, int64_t tokens) {
  if (sh.rate == 0) return 0;
  const int64_t prev = sh.overlapping ? 2 * sh.rate * sh.width : 0;
  return static_cast<size_t>(2 * sh.rate * sh.in_width() + prev + tokens / sh.rate * sh.width);
}

size_t floats(const std::vector<float>& v) { return v.capacity() * sizeof(float); }

size_t compressor_bytes(const CompressorState& s) {
  return floats(s.pend_c) + floats(s.pend_z) + floats(s.prev_c) + floats(s.prev_zb) + floats(s.entries);
}

}  // namespace

LayerState::LayerState(const Config& c, LayerType t)
    : type_(t), window_slots_(c.sliding_window - 1), head_dim_(c.head_dim) {
  window_.assign(static_cast<size_t>(window_slots_ * head_dim_), 0.0f);
  comp_ = make_compressor(main_shape(c, t));
  index_ = make_compressor(indexer_shape(c, t));
}

void LayerState::reset() {
  pos_ = 0;
  for (CompressorState* s : {&comp_, &index_}) {
    s->pending = 0;
    s->has_prev = false;
    s->emitted = 0;
    s->entries.clear();
  }
}

size_t LayerState::bytes() const { return floats(window_) + compressor_bytes(comp_) + compressor_bytes(index_); }

bool LayerState::fits(const Config& c, LayerType t) const {
  return type_ == t && window_slots_ == c.sliding_window - 1 && head_dim_ == c.head_dim && pos_ >= 0 &&
         window_.size() == static_cast<size_t>(window_slots_ * head_dim_) && compressor_fits(comp_, main_shape(c, t)) &&
         compressor_fits(index_, indexer_shape(c, t));
}

size_t state_bytes(const Config& c, LayerType t, int64_t tokens) {
  const size_t window = static_cast<size_t>((c.sliding_window - 1) * c.head_dim);
  return (window + compressor_floats(main_shape(c, t), tokens) + compressor_floats(indexer_shape(c, t), tokens)) *
         sizeof(float);
}

}  // namespace dsv4
