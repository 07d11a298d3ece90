// random_state (dsv4/state.h): a decode state of any length without a
// prefill, so decode can be timed at a million tokens. Every row is drawn
// from its own counter-based stream (seed, store, row), so the state does not
// depend on the thread count, and stored through RowStore::put, so coded
// rows have exactly the deployment formats (indexer keys are rotated first).
#include <algorithm>
#include <vector>

#include "dsv4/error.h"
#include "dsv4/state.h"

namespace dsv4 {
namespace {

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// n values with mean 0 and standard deviation `sd` (Irwin–Hall of 4 uniforms:
// cheap, bounded at ±3.5 sd, near normal), from the stream of (seed, id).
void fill(float* x, int64_t n, float sd, uint64_t seed, uint64_t id) {
  uint64_t s = seed * 0x632be59bd9b4e019ull + id;
  constexpr float k = 0x1p-16f * 1.7320508f;  // U(0, 2^16) x this: variance 1/4 per term after centring
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = splitmix(s);
    const float u = static_cast<float>(r & 0xffff) + static_cast<float>((r >> 16) & 0xffff) +
                    static_cast<float>((r >> 32) & 0xffff) + static_cast<float>(r >> 48);
    x[i] = (u * k - 2.0f * 1.7320508f) * sd;
  }
}

// Rows [0, n) of `store`: RMS-normed-like values (entries, keys and window rows
// are RMSNorm'd then rotated, so sd 1). Stream ids: store tag << 40 | row.
void fill_rows(RowStore& store, int64_t n, uint64_t seed, uint64_t tag) {
  store.resize(n);
  const int64_t w = store.width();
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(w));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      fill(row.data(), w, 1.0f, seed, tag << 40 | static_cast<uint64_t>(i));
      store.put(i, row.data());
    }
  }
}

// A compressor after `tokens` tokens: floor(tokens/rate) entries, the pending
// rows of the incomplete window and (overlapping) series A of the last window.
// Pending C, Z are raw projections (sd ~0.6 for the random layers' inputs).
void fill_compressor(CompressorState& st, int64_t rate, int64_t tokens, uint64_t seed, uint64_t tag) {
  st.emitted = tokens / rate;
  st.pending = tokens % rate;
  fill_rows(st.entries, st.emitted, seed, tag);
  fill(st.pend_c.data(), st.pending * st.in_width, 0.6f, seed, (tag + 1) << 40);
  fill(st.pend_z.data(), st.pending * st.in_width, 0.6f, seed, (tag + 2) << 40);
  st.has_prev = st.overlapping && st.emitted > 0;
  if (st.has_prev) {
    fill(st.prev_c.data(), static_cast<int64_t>(st.prev_c.size()), 0.6f, seed, (tag + 3) << 40);
    fill(st.prev_zb.data(), static_cast<int64_t>(st.prev_zb.size()), 0.6f, seed, (tag + 4) << 40);
  }
}

}  // namespace

LayerState random_state(const Config& c, LayerType t, int64_t tokens, uint64_t seed, Numerics n) {
  if (tokens < 0) fail("random_state: tokens must be >= 0, got " + std::to_string(tokens));
  LayerState st(c, t, n);
  // The ring holds the last min(tokens, W-1) rows; the rest stay zero as in a real state.
  RowStore& win = st.window();
  const int64_t slots = st.window_slots(), held = std::min(tokens, slots);
  RowStore fresh = win;
  fill_rows(fresh, held, seed, 1);
  for (int64_t p = tokens - held; p < tokens; ++p) win.copy_row(p % slots, fresh, p - (tokens - held));
  if (t != LayerType::sliding) fill_compressor(st.compressor(), c.compress_rate(t), tokens, seed, 8);
  if (t == LayerType::csa) fill_compressor(st.indexer(), c.compress_rate_csa, tokens, seed, 16);
  st.advance(tokens);
  return st;
}

}  // namespace dsv4
