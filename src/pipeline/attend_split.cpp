// Stage 4, flash-decoding (deployment numerics, short chunks): one query's
// keys — the window rows, then the entries — cut into runs of kSplitKeys and
// the runs into groups of consecutive runs, cuts that depend on the key count
// alone, so the threads can share one query and any thread count gives the
// same bits. A group is one unit of work: the query transposed once, then per
// run one fused kernel over all heads (the MQA key set is shared;
// ops/attend_run.h: logits, softmax and P·V in cache, no GEMM packing per
// call) continuing the group's running state (o, m, l: the flash-attention
// rescale), which stays in L2; one part per group. attend_merge combines the
// groups in group order with the sink.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/attend_run.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

// An aligned slice of a thread_local buffer (on a cache line: rows of 512 and
// the kernels' vector loads never split one).
float* aligned(std::vector<float>& buf, size_t floats) {
  buf.resize(floats + 16);
  float* at = buf.data();
  return at + (16 - reinterpret_cast<uintptr_t>(at) / sizeof(float) % 16) % 16;
}

// The stored bytes of entries [e0, e1) requested into L2 (entries past the
// store's end are skipped): issued a run ahead, they arrive while the kernel
// computes, where widening them on demand waited on every line.
void prefetch_entries(const KeySet& keys, int64_t e0, int64_t e1) {
  if (keys.entries || !keys.entry_rows) return;
  e1 = std::min(e1, keys.n_entries);
  if (e1 <= e0) return;
  const size_t rb = keys.entry_rows->row_bytes();
  const uint8_t *at = keys.entry_rows->data() + static_cast<size_t>(e0) * rb, *end = at + (e1 - e0) * rb;
  for (; at < end; at += 64) __builtin_prefetch(at, 0, 2);
}

int64_t runs_of(const KeySet& keys) {
  return std::max<int64_t>(1, (keys.n_window + keys.n_entries + kSplitKeys - 1) / kSplitKeys);
}

}  // namespace

int64_t attend_group_runs(int64_t runs) { return std::max<int64_t>(1, runs / kSplitGroups); }

int64_t attend_splits(const KeySet& keys) {
  const int64_t runs = runs_of(keys), g = attend_group_runs(runs);
  return (runs + g - 1) / g;
}

void attend_part(const PackedLayer& p, const float* q, const KeySet& keys, int64_t split, float* o, float* m,
                 float* l) {
  const int64_t hd = p.c.head_dim, nw = keys.n_window, h_n = p.c.num_attention_heads;
  const int64_t runs = runs_of(keys), g = attend_group_runs(runs);
  thread_local std::vector<float> qt_buf, decoded_buf;
  const int64_t first = split * g * kSplitKeys;
  prefetch_entries(keys, std::max(first, nw) - nw,
                   first + kSplitKeys - nw);  // the first run's, during the transposition
  float* qt = aligned(qt_buf, attn_run::query_floats(h_n, hd));
  attn_run::transpose_query(q, h_n, hd, qt);  // once for the group's runs
  attn_run::Run run;
  run.qt = qt, run.heads = h_n, run.dim = hd;
  run.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  float* decoded = aligned(decoded_buf, static_cast<size_t>(kSplitKeys * hd));
  for (int64_t s = split * g; s < std::min(runs, (split + 1) * g); ++s) {
    const int64_t i0 = s * kSplitKeys, i1 = std::min(nw + keys.n_entries, i0 + kSplitKeys);
    // The run's window rows [w0, w1) and entries [e0, e1).
    const int64_t w0 = std::min(i0, nw), w1 = std::min(i1, nw), e0 = std::max(i0, nw) - nw, e1 = i1 - nw;
    const float* entries = keys.entries ? keys.entries + e0 * hd : nullptr;
    if (!entries && e1 > e0) {  // this run's entries alone, widened here (at most kSplitKeys rows: in cache)
      keys.entry_rows->read(e0, e1 - e0, decoded);
      entries = decoded;
    }
    const float* rows[kSplitKeys];  // window rows then entries, where they are
    int64_t n = 0;
    for (int64_t w = w0; w < w1; ++w) rows[n++] = keys.window + w * hd;
    for (int64_t e = e0; e < e1; ++e) rows[n++] = entries + (e - e0) * hd;
    run.rows = rows, run.n = n, run.fresh = s == split * g;               // the group's first run writes the state
    prefetch_entries(keys, std::max(i1, nw) - nw, i1 + kSplitKeys - nw);  // the next run's
    attn_run::attend(run, o, m, l);
  }
}

void attend_merge(const PackedLayer& p, int64_t splits, const float* parts, const float* m, const float* l,
                  int64_t h_begin, int64_t h_end, float* o) {
  attn_run::Parts g;
  g.o = parts, g.m = m, g.l = l, g.groups = splits, g.heads = p.c.num_attention_heads, g.dim = p.c.head_dim;
  attn_run::merge(g, p.w->sinks.ptr(), h_begin, h_end, o);
}

}  // namespace dsv4
