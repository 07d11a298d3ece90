// What a job hands back besides its output: the intermediates (debug), the
// training tape and the attention map.
#include <algorithm>
#include <cstring>

#include "pipeline/job.h"

namespace dsv4 {

void fill_debug(const PackedLayer& p, const Projected& pr, const Job& j) {
  const Config& c = p.c;
  const int64_t hd = c.head_dim, h_n = c.num_attention_heads, s = j.len;
  Intermediates& d = *j.dbg;
  d.q = Tensor({h_n, s, hd});
  d.kv = Tensor({s, hd});
  for (int64_t t = 0; t < s; ++t) {
    for (int64_t h = 0; h < h_n; ++h)
      std::memcpy(&d.q.data[(h * s + t) * hd], &pr.up[(j.row0 + t) * p.n_up + h * hd], hd * sizeof(float));
    std::memcpy(&d.kv.data[t * hd], &(*j.kwin)[(j.n_cached + t) * hd], hd * sizeof(float));
  }
  if (p.type == LayerType::sliding) return;
  std::vector<float> buf;
  const CompressorState& cs = j.st->compressor();
  const float* e = cs.entries.rows_f32(cs.emitted, buf);
  d.compressed_kv = Tensor({cs.emitted, cs.width}, std::vector<float>(e, e + cs.emitted * cs.width));
  if (!p.w->indexer) return;
  const CompressorState& ix = j.st->indexer();
  const int64_t hi = c.index_n_heads, di = c.index_head_dim, n_t = ix.emitted;
  d.indexer_q = Tensor({s, hi, di});
  for (int64_t t = 0; t < s; ++t)
    std::memcpy(&d.indexer_q.data[t * hi * di], &pr.up[(j.row0 + t) * p.n_up + p.off_index_q], hi * di * sizeof(float));
  const float* keys = ix.entries.rows_f32(n_t, buf);
  d.indexer_kv = Tensor({n_t, di}, std::vector<float>(keys, keys + n_t * di));
  d.index_scores = Tensor({s, n_t});
  index_scores_dense(p, pr, j.row0, s, IndexKeys::of(ix.entries), n_t, d.index_scores.ptr());
  d.topk.shape = {s, j.width};
  d.topk.data.assign(j.topk->data(), j.topk->data() + j.len * j.width);
}

size_t TapeData::bytes() const {
  size_t n = (x.size() + rows.size()) * sizeof(float);
  for (const SeqTape& s : seqs)
    n += (s.kv.size() + s.o.size() + s.grouped.size()) * sizeof(float) + s.entries.rows() * s.entries.row_bytes() +
         s.topk.size() * sizeof(int32_t);
  return n;
}

void size_seq_tape(const PackedLayer& p, int64_t len, SeqTape& t, int64_t p0) {
  const Config& c = p.c;
  t.len = len;
  t.p0 = p0, t.kv0 = std::max<int64_t>(0, p0 - (c.sliding_window - 1));
  t.kv.resize(static_cast<size_t>((p0 + len - t.kv0) * c.head_dim));
  t.o.resize(static_cast<size_t>(len * c.num_attention_heads * c.head_dim));
  t.grouped.resize(static_cast<size_t>(len * c.o_groups * c.o_lora_rank));
  t.width = p.type == LayerType::csa ? std::min(c.index_topk, (p0 + len) / p.rate) : 0;
  t.topk.assign(static_cast<size_t>(len * t.width), -1);
  t.entries.clear();
}

// What the backward cannot recompute cheaply, at the chunk's positions:
// window rows, the CSA selection, o (de-rotated) and the grouped projection.
void record_tape(const PackedLayer& p, const Job& j, const float* o, const float* grouped) {
  const Config& c = p.c;
  const int64_t hd = c.head_dim, ho = c.num_attention_heads * hd, gd = c.o_groups * c.o_lora_rank;
  SeqTape& t = *j.tape;
  const int64_t at = j.p0 - t.p0;  // the chunk's first row in the tape
  std::memcpy(&t.o[at * ho], &o[j.row0 * ho], j.len * ho * sizeof(float));
  std::memcpy(&t.grouped[at * gd], &grouped[j.row0 * gd], j.len * gd * sizeof(float));
  std::memcpy(&t.kv[(j.p0 - t.kv0) * hd], &(*j.kwin)[j.n_cached * hd], j.len * hd * sizeof(float));
  for (int64_t i = 0; i < j.len && t.width > 0; ++i)  // CSA with entries (width = min(k, S / m))
    std::copy_n(j.topk->data() + i * j.width, j.width, t.topk.data() + (at + i) * t.width);
}

void start_map(const PackedLayer& p, const Job& j) {
  AttentionMap& m = *j.map;
  const int64_t h_n = p.c.num_attention_heads;
  m.mass = Tensor({h_n, j.len, 3});
  if (p.type == LayerType::csa) {
    m.selected.shape = {j.len, j.width};
    m.selected.data.assign(j.topk->data(), j.topk->data() + j.len * j.width);
  }
  if (j.dense_map) m.dense = Tensor({h_n, j.len, j.p0 + j.len + j.st->compressor().emitted});
}

MassOut map_out(const Job& j, int64_t r, int64_t t, int64_t n_window) {
  AttentionMap& m = *j.map;
  const int64_t i = r - j.row0, cols = m.dense.empty() ? 0 : m.dense.dim(2);
  MassOut o;
  o.mass = m.mass.ptr() + i * 3, o.mass_stride = j.len * 3;
  if (cols) o.dense = m.dense.ptr() + i * cols, o.dense_stride = j.len * cols;
  o.window_col = t - n_window + 1, o.entry_col = j.p0 + j.len;
  return o;
}

}  // namespace dsv4
