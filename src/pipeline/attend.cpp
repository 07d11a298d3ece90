// Stage 4: sparse gather attention with the sink. One query's visible keys
// (its window run plus the compressed entries it may see) are gathered by
// pointer, never masked: the work is O(W + k) per query and head.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/vec.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

constexpr int64_t kKeyBlock = 16;  // keys per online-softmax step (32 KB at D = 512)

}  // namespace

void attend(const PackedLayer& p, const float* q, const KeySet& keys, int64_t h_begin, int64_t h_end, float* o) {
  const int64_t hd = p.c.head_dim, nh = h_end - h_begin;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const float* sinks = p.w->sinks.ptr();

  thread_local std::vector<const float*> ptr;
  thread_local std::vector<float> mx, den, logit;
  ptr.clear();
  for (int64_t j = 0; j < keys.n_window; ++j) ptr.push_back(keys.window + j * hd);
  for (int64_t j = 0; j < keys.n_entries; ++j) {
    const int64_t e = keys.selected ? keys.selected[j] : j;
    if (e >= 0) ptr.push_back(keys.entries + e * hd);
  }
  const int64_t n = static_cast<int64_t>(ptr.size());

  // Online softmax per head, starting from the sink: max = s_h, mass = exp(0) = 1.
  mx.assign(sinks + h_begin, sinks + h_end);
  den.assign(static_cast<size_t>(nh), 1.0f);
  logit.resize(kKeyBlock);
  std::fill(o + h_begin * hd, o + h_end * hd, 0.0f);
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    const int64_t nb = std::min(kKeyBlock, n - j0);
    for (int64_t h = 0; h < nh; ++h) {
      const float* qh = q + (h_begin + h) * hd;
      float* oh = o + (h_begin + h) * hd;
      float m = mx[h];
      for (int64_t j = 0; j < nb; ++j) {
        logit[j] = vec::dot(qh, ptr[j0 + j], hd) * scale;
        m = std::max(m, logit[j]);
      }
      if (m > mx[h]) {  // rescale what was accumulated under the old max
        const float alpha = std::exp(mx[h] - m);
        den[h] *= alpha;
        vec::scale(oh, alpha, hd);
        mx[h] = m;
      }
      for (int64_t j = 0; j < nb; ++j) {
        const float pj = std::exp(logit[j] - m);
        den[h] += pj;
        vec::axpy(oh, pj, ptr[j0 + j], hd);
      }
    }
  }
  for (int64_t h = 0; h < nh; ++h) vec::scale(o + (h_begin + h) * hd, 1.0f / den[h], hd);
}

}  // namespace dsv4
