// The CSA gather: the entries a query attends are the valid ids of its top-k
// row in ascending order, their rows read from the store (decoded in
// deployment numerics). One copy, used by the forward's attention and by the
// backward (train/attend_grad.cpp).
#include <algorithm>

#include "pipeline/job.h"

namespace dsv4 {

int64_t selected_ids(const int32_t* topk_row, int64_t width, int32_t* ids) {
  int64_t n = 0;
  for (int64_t i = 0; i < width; ++i)
    if (topk_row[i] >= 0) ids[n++] = topk_row[i];
  std::sort(ids, ids + n);  // the key set is a set; index order reads memory forward
  return n;
}

int64_t gather_selected(const RowStore& entries, const int32_t* topk_row, int64_t width, int32_t* ids, float* rows) {
  const int64_t n = selected_ids(topk_row, width, ids);
  entries.gather(ids, n, rows);
  return n;
}

namespace {

// Short chunks (decode, serving batches) split a query's heads into blocks
// that share its keys: its selection is gathered once for all of them.
bool gathers_once(const PackedLayer& p, const Job& j) { return p.type == LayerType::csa && j.len <= kShortChunk; }

}  // namespace

// Each row's ids first (a sort of at most k, on the calling thread), then the
// rows' entries in pieces of kGatherPiece over the threads: at 1M tokens one
// decode query's 512 entries are ~0.2 ms of decoding, no longer on one thread
// while the others wait. Each entry is decoded alone: the same bits.
constexpr int64_t kGatherPiece = 64;
void gather_short_chunks(const PackedLayer& p, std::vector<Job>& jobs) {
  struct Piece {
    const Job* j;
    int64_t i, e0, e1;  // the job's row; its entries [e0, e1)
  };
  thread_local std::vector<Piece> list;  // the calling thread's, shared with the team below
  auto& pieces = list;
  pieces.clear();
  const int64_t hd = p.c.head_dim;
  for (Job& j : jobs) {
    if (!gathers_once(p, j)) continue;
    const int64_t w = j.width;
    j.picked_ids->get(static_cast<size_t>(std::max<int64_t>(j.len * w, 1)));
    j.picked->get(static_cast<size_t>(std::max<int64_t>(j.len * w, 1) * hd));
    for (int64_t i = 0; i < j.len; ++i) {
      const int64_t n = selected_ids(j.topk->data() + i * w, w, j.picked_ids->data() + i * w);
      for (int64_t e = 0; e < n; e += kGatherPiece) pieces.push_back({&j, i, e, std::min(n, e + kGatherPiece)});
    }
  }
#pragma omp parallel for schedule(dynamic) if (pieces.size() > 1)
  for (size_t t = 0; t < pieces.size(); ++t) {
    const Piece& pc = pieces[t];
    const int64_t at = pc.i * pc.j->width + pc.e0;
    pc.j->st->compressor().entries.gather(pc.j->picked_ids->data() + at, pc.e1 - pc.e0, pc.j->picked->data() + at * hd);
  }
}

void entry_keys(const PackedLayer& p, const Job& j, int64_t r, int64_t t, KeySet& ks) {
  const CompressorState& cs = j.st->compressor();
  if (p.type == LayerType::hca) {  // the first floor((t+1)/m') entries, in place (or decoded per run)
    ks.entries = j.hca_entries;
    if (!ks.entries) ks.entry_rows = &cs.entries;
    ks.n_entries = std::min(cs.emitted, (t + 1) / p.rate);
  }
  if (p.type != LayerType::csa) return;
  const int64_t i = r - j.row0, w = j.width;  // width 0: no entries yet
  const int32_t* row = j.topk->data() + i * w;
  if (gathers_once(p, j)) {
    ks.ids = j.picked_ids->data() + i * w;
    ks.entries = j.picked->data() + i * w * p.c.head_dim;
    ks.n_entries = std::count_if(row, row + w, [](int32_t e) { return e >= 0; });
    return;
  }
  thread_local std::vector<int32_t> ids;  // this thread's query: one unit holds all its heads
  thread_local std::vector<float> rows;
  ids.resize(static_cast<size_t>(w));
  rows.resize(static_cast<size_t>(w * p.c.head_dim));
  ks.n_entries = gather_selected(cs.entries, row, w, ids.data(), rows.data());
  ks.ids = ids.data(), ks.entries = rows.data();
}

}  // namespace dsv4
