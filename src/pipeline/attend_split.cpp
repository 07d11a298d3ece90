// Stage 4, flash-decoding (deployment numerics, short chunks): one query's
// keys — the window rows, then the entries — cut into runs of kSplitKeys, a
// cut that depends on the key count alone, so the threads can share one query
// and any thread count gives the same bits. Each run is one fused kernel over
// all heads (the MQA key set is shared; ops/attend_run.h: logits, softmax and
// P·V in cache, no GEMM packing per call). attend_merge combines the runs in
// run order with the sink.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/attend_run.h"
#include "pipeline/pipeline.h"

namespace dsv4 {

int64_t attend_splits(const KeySet& keys) {
  return std::max<int64_t>(1, (keys.n_window + keys.n_entries + kSplitKeys - 1) / kSplitKeys);
}

void attend_part(const PackedLayer& p, const float* q, const KeySet& keys, int64_t split, float* o, float* m,
                 float* l) {
  const int64_t hd = p.c.head_dim, nw = keys.n_window;
  const int64_t i0 = split * kSplitKeys, i1 = std::min(nw + keys.n_entries, i0 + kSplitKeys);
  // The run's window rows [w0, w1) and entries [e0, e1).
  const int64_t w0 = std::min(i0, nw), w1 = std::min(i1, nw), e0 = std::max(i0, nw) - nw, e1 = i1 - nw;
  thread_local std::vector<float> decoded;
  const float* entries = keys.entries ? keys.entries + e0 * hd : nullptr;
  if (!entries && e1 > e0) {  // this run's entries alone, widened here (at most kSplitKeys rows: in cache)
    decoded.resize(static_cast<size_t>((e1 - e0) * hd + 16));
    float* at = decoded.data();  // on a cache line (rows of 512: the kernel's row loads never split one)
    at += (16 - reinterpret_cast<uintptr_t>(at) / sizeof(float) % 16) % 16;
    keys.entry_rows->read(e0, e1 - e0, at);
    entries = at;
  }
  const float* rows[kSplitKeys];  // window rows then entries, where they are
  int64_t n = 0;
  for (int64_t w = w0; w < w1; ++w) rows[n++] = keys.window + w * hd;
  for (int64_t e = e0; e < e1; ++e) rows[n++] = entries + (e - e0) * hd;
  attn_run::Run run;
  run.q = q, run.heads = p.c.num_attention_heads, run.dim = hd, run.rows = rows, run.n = n;
  run.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  attn_run::attend(run, o, m, l);
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
