// Stage 4: sparse gather attention with the sink. K = V is one shared head
// (MQA), so for one query every head reads the same keys: the logits of a
// block of heads are one GEMM [heads, D] x [keys, D]^T and the output one GEMM
// [heads, keys] x [keys, D]. Window keys and HCA entries are contiguous runs
// read in place; CSA's selected entries come gathered (selected_ids, in index
// order). Work and memory are O(W + k) per query; nothing is masked.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/blas.h"
#include "ops/vec.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

// Per head: the probabilities of the keys (rows of `probs`, window first) and of the sink.
void record_map(const MassOut& m, const float* probs, const float* sink_p, int64_t h_begin, int64_t nh, int64_t nw,
                int64_t n_e, const int32_t* entry_ids) {
  const int64_t n = nw + n_e;
  for (int64_t h = 0; h < nh; ++h) {
    const float* l = probs + h * n;
    double win = 0, ent = 0;
    for (int64_t i = 0; i < nw; ++i) win += l[i];
    for (int64_t j = 0; j < n_e; ++j) ent += l[nw + j];
    float* mass = m.mass + (h_begin + h) * m.mass_stride;
    mass[0] = static_cast<float>(win), mass[1] = static_cast<float>(ent), mass[2] = sink_p[h];
    if (!m.dense) continue;
    float* row = m.dense + (h_begin + h) * m.dense_stride;
    for (int64_t i = 0; i < nw; ++i) row[m.window_col + i] = l[i];
    for (int64_t j = 0; j < n_e; ++j) row[m.entry_col + (entry_ids ? entry_ids[j] : j)] = l[nw + j];
  }
}

}  // namespace

void attend(const PackedLayer& p, const float* q, const KeySet& keys, int64_t h_begin, int64_t h_end, float* o,
            const MassOut* map) {
  const int64_t hd = p.c.head_dim, nh = h_end - h_begin;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const float* sinks = p.w->sinks.ptr();

  thread_local std::vector<float> logits;
  const float* entries = keys.entries;
  const int64_t nw = keys.n_window, n_e = keys.n_entries, n = nw + n_e;
  logits.resize(static_cast<size_t>(nh * n));

  const float* qh = q + h_begin * hd;
  gemm_nt(nh, nw, hd, qh, hd, keys.window, hd, logits.data(), n);
  gemm_nt(nh, n_e, hd, qh, hd, entries, hd, logits.data() + nw, n);

  // Softmax per head over the keys plus the sink logit s_h, which takes mass but adds no value.
  thread_local std::vector<float> sink_p;
  sink_p.resize(static_cast<size_t>(nh));
  for (int64_t h = 0; h < nh; ++h) {
    float* l = &logits[h * n];
    const float sink = sinks[h_begin + h];
    const float mx = vec::scale_max(l, scale, n, sink);
    const float e_sink = std::exp(sink - mx), den = e_sink + vec::exp_sum(l, n, mx);
    vec::scale(l, 1.0f / den, n);
    sink_p[h] = e_sink / den;
  }
  if (map) record_map(*map, logits.data(), sink_p.data(), h_begin, nh, nw, n_e, keys.ids);

  float* oh = o + h_begin * hd;
  gemm_nn(nh, hd, nw, logits.data(), n, keys.window, hd, oh, hd);
  gemm_nn(nh, hd, n_e, logits.data() + nw, n, entries, hd, oh, hd, 1.0f);
}

}  // namespace dsv4
