// Stage 2: compressors. A window of `rate` tokens pools into one entry with a
// per-channel softmax over its slots; CSA-style (overlapping) compressors also
// pool the series-A half of the previous window. The state holds the tokens of
// the incomplete window and series A of the last complete one, so a chunk
// boundary anywhere gives the same entries.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "ops/norm.h"
#include "ops/rope.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

// One window's rows: C and Z pointers per slot (row stride irrelevant).
struct Window {
  const float* c[1024];
  const float* z[1024];
};

// Pool one entry into `out` [width]. prev_c/prev_zb: series A of window w-1
// ([rate, width], Z already biased) or null (first window: those slots are absent).
void pool(const CompressorWeights& w, int64_t rate, int64_t width, bool overlap, const float* const* c_rows,
          const float* const* z_rows, const float* prev_c, const float* prev_zb, float* out, float* mx, float* den) {
  const int64_t in_w = overlap ? 2 * width : width, off = overlap ? width : 0;
  const float* bias = w.position_bias.ptr();
  std::fill_n(mx, width, -std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < rate; ++j) {
    if (prev_c)
      for (int64_t ch = 0; ch < width; ++ch) mx[ch] = std::max(mx[ch], prev_zb[j * width + ch]);
    for (int64_t ch = 0; ch < width; ++ch) mx[ch] = std::max(mx[ch], z_rows[j][off + ch] + bias[j * in_w + off + ch]);
  }
  std::fill_n(den, width, 0.0f);
  std::fill_n(out, width, 0.0f);
  for (int64_t j = 0; j < rate; ++j) {
    if (prev_c)
      for (int64_t ch = 0; ch < width; ++ch) {
        const float e = std::exp(prev_zb[j * width + ch] - mx[ch]);
        den[ch] += e;
        out[ch] += e * prev_c[j * width + ch];
      }
    for (int64_t ch = 0; ch < width; ++ch) {
      const float e = std::exp(z_rows[j][off + ch] + bias[j * in_w + off + ch] - mx[ch]);
      den[ch] += e;
      out[ch] += e * c_rows[j][off + ch];
    }
  }
  for (int64_t ch = 0; ch < width; ++ch) out[ch] /= den[ch];
}

// Series A (C, Z + B) of a window, as the next window's "previous" slots.
void keep_series_a(const CompressorWeights& w, int64_t rate, int64_t width, const Window& win, CompressorState& st) {
  const float* bias = w.position_bias.ptr();
  for (int64_t j = 0; j < rate; ++j)
    for (int64_t ch = 0; ch < width; ++ch) {
      st.prev_c[j * width + ch] = win.c[j][ch];
      st.prev_zb[j * width + ch] = win.z[j][ch] + bias[j * 2 * width + ch];
    }
  st.has_prev = true;
}

}  // namespace

int64_t compress_feed(const PackedLayer& p, const CompressorWeights& w, CompressorState& st, const float* c_rows,
                      const float* z_rows, int64_t ld, int64_t n, int64_t store_from) {
  const int64_t rate = w.position_bias.dim(0), width = st.width, in_w = st.in_width;
  if (rate > 1024) fail("compress rate " + std::to_string(rate) + " exceeds the supported 1024");
  // Tokens complete windows in order: first the pending ones, then whole windows of new rows.
  const int64_t total = st.pending + n, n_new = total / rate;
  const int64_t first = st.emitted;
  st.entries.resize(first + n_new - store_from);

  auto window_rows = [&](int64_t k, Window& win) {  // k-th completed window of this call
    for (int64_t j = 0; j < rate; ++j) {
      const int64_t tok = k * rate + j - st.pending;  // index into the new rows; < 0 means pending
      win.c[j] = tok < 0 ? &st.pend_c[(tok + st.pending) * in_w] : c_rows + tok * ld;
      win.z[j] = tok < 0 ? &st.pend_z[(tok + st.pending) * in_w] : z_rows + tok * ld;
    }
  };

  // Windows pool independently once their previous series A is known: gather it
  // from the rows for all but the first window of the call.
#pragma omp parallel if (n_new > 1)  // no thread wake-up for the one window a decode step may close
  {
    std::vector<float> mx(width), den(width), pc, pz, entry(width);
    if (st.overlapping) pc.resize(rate * width), pz.resize(rate * width);
    Window win, prev;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < n_new; ++k) {
      window_rows(k, win);
      const float *prev_c = nullptr, *prev_zb = nullptr;
      if (st.overlapping && k > 0) {
        window_rows(k - 1, prev);
        const float* bias = w.position_bias.ptr();
        for (int64_t j = 0; j < rate; ++j)
          for (int64_t ch = 0; ch < width; ++ch) {
            pc[j * width + ch] = prev.c[j][ch];
            pz[j * width + ch] = prev.z[j][ch] + bias[j * in_w + ch];
          }
        prev_c = pc.data(), prev_zb = pz.data();
      } else if (st.overlapping && st.has_prev) {
        prev_c = st.prev_c.data(), prev_zb = st.prev_zb.data();
      }
      float* e = entry.data();
      pool(w, rate, width, st.overlapping, win.c, win.z, prev_c, prev_zb, e, mx.data(), den.data());
      rms_norm(e, width, w.kv_norm.ptr(), p.c.rms_norm_eps);
      rope_apply(e, width, p.inv_freq, (first + k) * rate);
      st.entries.put(first + k - store_from, e);  // in the state's numerics
    }
  }
  if (st.overlapping && n_new > 0) {
    Window last;
    window_rows(n_new - 1, last);
    keep_series_a(w, rate, width, last, st);
  }
  st.emitted += n_new;

  // Leftover tokens become the new incomplete window.
  const int64_t consumed_new = n_new * rate - st.pending;  // new rows used by complete windows (may be < 0)
  if (consumed_new < 0) {  // no window completed: append all new rows after the pending ones
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(&st.pend_c[(st.pending + i) * in_w], c_rows + i * ld, in_w * sizeof(float));
      std::memcpy(&st.pend_z[(st.pending + i) * in_w], z_rows + i * ld, in_w * sizeof(float));
    }
    st.pending += n;
  } else {
    st.pending = n - consumed_new;
    for (int64_t i = 0; i < st.pending; ++i) {
      std::memcpy(&st.pend_c[i * in_w], c_rows + (consumed_new + i) * ld, in_w * sizeof(float));
      std::memcpy(&st.pend_z[i * in_w], z_rows + (consumed_new + i) * ld, in_w * sizeof(float));
    }
  }
  return n_new;
}

}  // namespace dsv4
