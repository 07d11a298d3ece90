// The sliding window ring of a sequence's state, seen by one chunk.
#include <algorithm>

#include "pipeline/job.h"

namespace dsv4 {

void gather_window(const PackedLayer& p, Projected& pr, Job& j) {
  const int64_t hd = p.c.head_dim, slots = j.st->window_slots();
  const RowStore& ring = j.st->window();
  j.n_cached = std::min(j.p0, slots);
  float* kwin = j.kwin->get(static_cast<size_t>((j.n_cached + j.len) * hd));
  for (int64_t i = 0; i < j.n_cached; ++i) ring.read((j.p0 - j.n_cached + i) % slots, 1, &kwin[i * hd]);
  j.fresh->resize_like(ring, j.len);
  for (int64_t i = 0; i < j.len; ++i)
    j.fresh->put(i, &pr.in[(j.row0 + i) * p.n_in + p.off_kv], &kwin[(j.n_cached + i) * hd]);
}

void keep_window(Job& j) {
  const int64_t slots = j.st->window_slots(), end = j.p0 + j.len;
  for (int64_t pos = std::max(j.p0, end - slots); pos < end; ++pos)
    j.st->window().copy_row(pos % slots, *j.fresh, pos - j.p0);
}

}  // namespace dsv4
