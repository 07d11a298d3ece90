#include "dsv4/state.h"

namespace dsv4 {
namespace {

CompressorState make_compressor(int64_t rate, int64_t width, bool overlapping) {
  CompressorState s;
  s.width = width;
  s.overlapping = overlapping;
  s.in_width = overlapping ? 2 * width : width;
  s.pend_c.assign(static_cast<size_t>(rate * s.in_width), 0.0f);
  s.pend_z.assign(static_cast<size_t>(rate * s.in_width), 0.0f);
  if (overlapping) {
    s.prev_c.assign(static_cast<size_t>(rate * width), 0.0f);
    s.prev_zb.assign(static_cast<size_t>(rate * width), 0.0f);
  }
  return s;
}

size_t floats(const std::vector<float>& v) { return v.capacity() * sizeof(float); }

size_t compressor_bytes(const CompressorState& s) {
  return floats(s.pend_c) + floats(s.pend_z) + floats(s.prev_c) + floats(s.prev_zb) + floats(s.entries);
}

}  // namespace

LayerState::LayerState(const Config& c, LayerType t)
    : type_(t), window_slots_(c.sliding_window - 1), head_dim_(c.head_dim) {
  window_.assign(static_cast<size_t>(window_slots_ * head_dim_), 0.0f);
  if (t == LayerType::csa) {
    comp_ = make_compressor(c.compress_rate_csa, c.head_dim, true);
    index_ = make_compressor(c.compress_rate_csa, c.index_head_dim, true);
  } else if (t == LayerType::hca) {
    comp_ = make_compressor(c.compress_rate_hca, c.head_dim, false);
  }
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

}  // namespace dsv4
