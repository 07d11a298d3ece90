// LayerState: allocation, reset, size accounting.
#include "dsv4/state.h"

#include <algorithm>

namespace dsv4 {
namespace {

struct Geometry {  // one compressor of a layer type (rate 0: none)
  int64_t rate = 0, width = 0;
  bool overlapping = false;
  RowStore entries;  // an empty store in the format of the entries
  int64_t in_width() const { return overlapping ? 2 * width : width; }
  // Bytes of `n` stored entries.
  size_t entry_bytes(int64_t n) const { return static_cast<size_t>(n) * entries.row_bytes(); }
};

bool deployed(Numerics n) { return n == Numerics::deployment; }

// The store of window rows and main entries, and of indexer keys, in numerics n.
RowStore kv_rows(const Config& c, Numerics n) {
  return RowStore(deployed(n) ? RowStore::Format::kv_fp8 : RowStore::Format::f32, c.head_dim, c.qk_rope_head_dim);
}
RowStore key_rows(const Config& c, Numerics n) {
  return RowStore(deployed(n) ? RowStore::Format::key_fp4 : RowStore::Format::f32, c.index_head_dim,
                  c.qk_rope_head_dim);
}

Geometry main_shape(const Config& c, LayerType t, Numerics n) {
  if (t == LayerType::csa) return {c.compress_rate_csa, c.head_dim, true, kv_rows(c, n)};
  if (t == LayerType::hca) return {c.compress_rate_hca, c.head_dim, false, kv_rows(c, n)};
  return {};
}
Geometry indexer_shape(const Config& c, LayerType t, Numerics n) {
  return t == LayerType::csa ? Geometry{c.compress_rate_csa, c.index_head_dim, true, key_rows(c, n)} : Geometry{};
}

CompressorState make_compressor(const Geometry& sh) {
  CompressorState s;
  s.width = sh.width;
  s.overlapping = sh.overlapping;
  s.in_width = sh.in_width();
  s.entries = sh.entries;
  s.pend_c.assign(static_cast<size_t>(sh.rate * s.in_width), 0.0f);
  s.pend_z.assign(static_cast<size_t>(sh.rate * s.in_width), 0.0f);
  if (sh.overlapping) {
    s.prev_c.assign(static_cast<size_t>(sh.rate * sh.width), 0.0f);
    s.prev_zb.assign(static_cast<size_t>(sh.rate * sh.width), 0.0f);
  }
  return s;
}

bool same_format(const RowStore& a, const RowStore& b) {
  return a.format() == b.format() && a.width() == b.width() && a.rope_dims() == b.rope_dims();
}

bool compressor_fits(const CompressorState& s, const Geometry& sh) {
  const auto n = [](int64_t v) { return static_cast<size_t>(v); };
  const int64_t prev = sh.overlapping ? sh.rate * sh.width : 0;
  return s.width == sh.width && s.overlapping == sh.overlapping && s.in_width == sh.in_width() &&
         same_format(s.entries, sh.entries) && s.pend_c.size() == n(sh.rate * sh.in_width()) &&
         s.pend_z.size() == s.pend_c.size() && s.prev_c.size() == n(prev) && s.prev_zb.size() == n(prev) &&
         s.pending >= 0 && s.pending < std::max<int64_t>(sh.rate, 1) && s.emitted >= 0 && s.entries.rows() >= s.emitted;
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
  return held(s.pend_c) + held(s.pend_z) + held(s.prev_c) + held(s.prev_zb) + s.entries.capacity_bytes();
}

}  // namespace

LayerState::LayerState(const Config& c, LayerType t, Numerics n)
    : type_(t), numerics_(n), window_slots_(c.sliding_window - 1), head_dim_(c.head_dim), window_(kv_rows(c, n)) {
  window_.assign(window_slots_);
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
  }
}

size_t LayerState::bytes() const {
  return window_.capacity_bytes() + compressor_bytes(comp_) + compressor_bytes(index_);
}

bool LayerState::fits(const Config& c, LayerType t, Numerics n) const {
  return type_ == t && numerics_ == n && window_slots_ == c.sliding_window - 1 && head_dim_ == c.head_dim &&
         pos_ >= 0 && same_format(window_, kv_rows(c, n)) && window_.rows() == window_slots_ &&
         compressor_fits(comp_, main_shape(c, t, n)) && compressor_fits(index_, indexer_shape(c, t, n));
}

size_t state_bytes(const Config& c, LayerType t, int64_t tokens, Numerics n) {
  const size_t window = static_cast<size_t>(c.sliding_window - 1) * kv_rows(c, n).row_bytes();
  return window + compressor_bytes(main_shape(c, t, n), tokens) + compressor_bytes(indexer_shape(c, t, n), tokens);
}

}  // namespace dsv4
