// Stage 4, flash-decoding (deployment numerics, short chunks): one query's
// keys — the window rows, then the entries — cut into runs of kSplitKeys, a
// cut that depends on the key count alone, so the threads can share one query
// and any thread count gives the same bits. Each run is two GEMMs over all
// heads (the MQA key set is shared), which keeps the GEMMs wide where the
// head blocks of attend() are [8, D] x [keys, D]^T. attend_merge combines the
// runs in run order with the sink.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/blas.h"
#include "ops/vec.h"
#include "pipeline/pipeline.h"

namespace dsv4 {

int64_t attend_splits(const KeySet& keys) {
  return std::max<int64_t>(1, (keys.n_window + keys.n_entries + kSplitKeys - 1) / kSplitKeys);
}

void attend_part(const PackedLayer& p, const float* q, const KeySet& keys, int64_t split, float* o, float* m,
                 float* l) {
  const int64_t hd = p.c.head_dim, h_n = p.c.num_attention_heads, nw = keys.n_window;
  const int64_t i0 = split * kSplitKeys, i1 = std::min(nw + keys.n_entries, i0 + kSplitKeys), n = i1 - i0;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  // The run's window rows [w0, w1) and entries [e0, e1).
  const int64_t w0 = std::min(i0, nw), w1 = std::min(i1, nw), e0 = std::max(i0, nw) - nw, e1 = i1 - nw;
  thread_local std::vector<float> logits, decoded;
  logits.resize(static_cast<size_t>(h_n * n));
  const float* entries = keys.entries ? keys.entries + e0 * hd : nullptr;
  if (!entries && e1 > e0) {  // this run's entries alone, widened here (at most kSplitKeys rows: in cache)
    decoded.resize(static_cast<size_t>((e1 - e0) * hd));
    keys.entry_rows->read(e0, e1 - e0, decoded.data());
    entries = decoded.data();
  }
  if (w1 > w0) gemm_nt(h_n, w1 - w0, hd, q, hd, keys.window + w0 * hd, hd, logits.data(), n);
  if (e1 > e0) gemm_nt(h_n, e1 - e0, hd, q, hd, entries, hd, logits.data() + (w1 - w0), n);
  for (int64_t h = 0; h < h_n; ++h) {
    float* lh = &logits[h * n];
    m[h] = vec::scale_max(lh, scale, n, -std::numeric_limits<float>::infinity());
    l[h] = vec::exp_sum(lh, n, m[h]);
  }
  if (w1 > w0) gemm_nn(h_n, hd, w1 - w0, logits.data(), n, keys.window + w0 * hd, hd, o, hd);
  if (e1 > e0) gemm_nn(h_n, hd, e1 - e0, logits.data() + (w1 - w0), n, entries, hd, o, hd, w1 > w0 ? 1.0f : 0.0f);
}

void attend_merge(const PackedLayer& p, int64_t splits, const float* parts, const float* m, const float* l,
                  int64_t h_begin, int64_t h_end, float* o) {
  const int64_t hd = p.c.head_dim, h_n = p.c.num_attention_heads;
  const float* sinks = p.w->sinks.ptr();
  for (int64_t h = h_begin; h < h_end; ++h) {
    float mx = sinks[h];
    for (int64_t s = 0; s < splits; ++s) mx = std::max(mx, m[s * h_n + h]);
    float den = std::exp(sinks[h] - mx);
    for (int64_t s = 0; s < splits; ++s) den += std::exp(m[s * h_n + h] - mx) * l[s * h_n + h];
    float* oh = o + h * hd;
    std::fill_n(oh, hd, 0.0f);
    for (int64_t s = 0; s < splits; ++s) {
      const float w = std::exp(m[s * h_n + h] - mx) / den;
      const float* part = parts + (s * h_n + h) * hd;
      for (int64_t d = 0; d < hd; ++d) oh[d] += w * part[d];
    }
  }
}

}  // namespace dsv4
