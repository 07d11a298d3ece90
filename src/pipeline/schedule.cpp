// The scheduler: the chunks of one call (one or many sequences, each through
// its own state) laid out as rows of one activation matrix, then the stages
// in pipeline order:
//
//   project -> window + compress -> index (CSA) -> attend -> output -> record, keep window
//
// (Calls of short chunks in deployment numerics run window + compress and the
// index on one thread beside the c_q-side projection: prepare_beside.)
// Each stage sees every row of the call; a chunk's results never depend on the
// other chunks (short chunks share the row-invariant GEMMs; long ones share a
// GEMM's parallel region, each in the BLAS tiles it has alone), so a batched
// call — many sequences, or packed documents — equals separate calls bit for bit.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "common/finite.h"
#include "pipeline/job.h"

namespace dsv4 {
namespace {

constexpr int64_t kDecodeHeadSplit = 8;  // head blocks per query of a short chunk

// Accumulates wall time into one StageTimes field (if timing is on).
class Stage {
 public:
  Stage(StageTimes* t, double StageTimes::*field) : t_(t), field_(field), start_(omp_get_wtime()) {}
  ~Stage() {
    if (t_) t_->*field_ += omp_get_wtime() - start_;
  }

 private:
  StageTimes* t_;
  double StageTimes::*field_;
  double start_;
};

// Per calling thread, reused across calls (see Scratch).
struct Workspace {
  Scratch<float> x, o, grouped, out;
  Scratch<int64_t> pos;
  Scratch<int32_t> job_of;
  Scratch<int64_t> unit_row, unit_h0, unit_h1;  // attention work items
  Scratch<int64_t> part_at;                     // flash-decoding: each row's first run
  Scratch<float> parts;                         // the runs' outputs, maxima and sums
  Projected pr;
  std::vector<Scratch<float>> kwin, picked;  // per job
  std::vector<Scratch<int32_t>> topk, picked_ids;
  std::vector<RowStore> fresh;
  std::vector<std::vector<float>> decoded;
};

// The call's rows: every job's chunk, short chunks first (their rows form the
// one row-invariant GEMM group), then each long chunk as its own group (its
// own BLAS tiles; linear() runs all groups' tiles in one parallel region).
struct Rows {
  int64_t n = 0;
  std::vector<RowGroup> groups;
  float* x = nullptr;         // [n, d] the inputs
  int64_t* pos = nullptr;     // [n] each row's position in its sequence
  int32_t* job_of = nullptr;  // [n] each row's job
};

Rows lay_out(const PackedLayer& p, std::vector<Job>& jobs, Workspace& ws) {
  const int64_t d = p.c.hidden_size;
  std::stable_partition(jobs.begin(), jobs.end(), [](const Job& j) { return j.len <= kShortChunk; });
  if (ws.kwin.size() < jobs.size()) {
    ws.kwin.resize(jobs.size()), ws.topk.resize(jobs.size());
    ws.fresh.resize(jobs.size()), ws.decoded.resize(jobs.size());
    ws.picked.resize(jobs.size()), ws.picked_ids.resize(jobs.size());
  }
  Rows r;
  for (size_t k = 0; k < jobs.size(); ++k) {
    Job& j = jobs[k];
    j.kwin = &ws.kwin[k], j.topk = &ws.topk[k], j.fresh = &ws.fresh[k], j.decoded = &ws.decoded[k];
    j.picked = &ws.picked[k], j.picked_ids = &ws.picked_ids[k];
    j.row0 = r.n;
    j.p0 = j.st->position();
    if (j.len > kShortChunk)
      r.groups.push_back({r.n, j.len, false});
    else if (r.groups.empty())
      r.groups.push_back({0, j.len, true});
    else
      r.groups.back().rows += j.len;
    r.n += j.len;
  }
  r.x = ws.x.get(static_cast<size_t>(r.n * d));
  r.pos = ws.pos.get(static_cast<size_t>(r.n));
  r.job_of = ws.job_of.get(static_cast<size_t>(r.n));
  for (size_t k = 0; k < jobs.size(); ++k) {
    const Job& j = jobs[k];
    if (j.x) std::memcpy(&r.x[j.row0 * d], j.x, j.len * d * sizeof(float));
    for (int64_t i = 0; i < j.len; ++i) {
      r.pos[j.row0 + i] = j.p0 + i;
      r.job_of[j.row0 + i] = static_cast<int32_t>(k);
    }
  }
  return r;
}

// The compressors of one job (main, and the CSA indexer's) take its C/Z rows.
void compress(const PackedLayer& p, const Projected& pr, Job& j) {
  const LayerWeights& w = *p.w;
  if (w.compressor)
    compress_feed(p, *w.compressor, j.st->compressor(), &pr.in[j.row0 * p.n_in + p.off_comp_c],
                  &pr.in[j.row0 * p.n_in + p.off_comp_z], p.n_in, j.len);
  if (w.indexer)
    compress_feed(p, w.indexer->compressor, j.st->indexer(), &pr.in[j.row0 * p.n_in + p.off_index_c],
                  &pr.in[j.row0 * p.n_in + p.off_index_z], p.n_in, j.len);
}

// The CSA selection of one job's queries over its indexer keys.
void index(const PackedLayer& p, const Projected& pr, const int64_t* pos, Job& j, StageTimes& t) {
  const CompressorState& ix = j.st->indexer();
  j.width = std::min(p.c.index_topk, ix.emitted);
  j.topk->get(static_cast<size_t>(j.len * j.width));
  index_topk(p, pr, j.row0, j.len, pos + j.row0, IndexKeys::of(ix.entries), ix.emitted, j.width, j.topk->data(),
             &t.index_scores, &t.topk);
}

}  // namespace

bool split_by_keys(const PackedLayer& p, const Job& j) { return p.deployed() && j.len <= kShortChunk && !j.map; }

namespace {

// The keys row r attends to.
KeySet key_set(const PackedLayer& p, const Job& j, const Rows& rows, int64_t r) {
  const int64_t hd = p.c.head_dim, t = rows.pos[r], at = j.n_cached + (r - j.row0);  // row of t in kwin
  const int64_t lo = std::max<int64_t>(0, at - p.c.sliding_window + 1);
  KeySet ks;
  ks.window = &(*j.kwin)[lo * hd];
  ks.n_window = at - lo + 1;
  entry_keys(p, j, r, t, ks);
  return ks;
}

// Attention per (query, head block). All heads of a query share its keys, so
// a block is two GEMMs. Short chunks (decode) split the heads so every thread
// works — in deployment numerics instead the keys (attend_part, groups of runs of
// kSplitKeys), then merge per head block. The split depends on the chunk
// alone, never on the thread count or the other chunks of the call.
void attend_rows(const PackedLayer& p, const std::vector<Job>& jobs, const Rows& rows, const Projected& pr,
                 Workspace& ws, float* o) {
  const int64_t hd = p.c.head_dim, h_n = p.c.num_attention_heads;
  const int64_t short_block = (h_n + kDecodeHeadSplit - 1) / kDecodeHeadSplit;
  int64_t* part_at = ws.part_at.get(static_cast<size_t>(rows.n));  // first run of row r in the parts; -1: none
  int64_t n_units = 0, n_parts = 0;
  for (int64_t r = 0; r < rows.n; ++r) {
    const Job& j = jobs[rows.job_of[r]];
    part_at[r] = split_by_keys(p, j) ? n_parts : -1;
    if (split_by_keys(p, j)) n_parts += attend_splits(key_set(p, j, rows, r));
    n_units += split_by_keys(p, j) ? 0 : j.len <= kShortChunk ? kDecodeHeadSplit : 1;
  }
  n_units += n_parts;
  int64_t* unit_row = ws.unit_row.get(static_cast<size_t>(n_units));
  int64_t* unit_h0 = ws.unit_h0.get(static_cast<size_t>(n_units));  // or the run (attend_part)
  int64_t* unit_h1 = ws.unit_h1.get(static_cast<size_t>(n_units));  // -1: a run
  float* parts = ws.parts.get(static_cast<size_t>(n_parts * h_n * (hd + 2)));
  float *part_m = parts + n_parts * h_n * hd, *part_l = part_m + n_parts * h_n;
  int64_t u = 0;
  for (int64_t r = 0; r < rows.n; ++r) {
    const Job& j = jobs[rows.job_of[r]];
    if (part_at[r] >= 0) {
      const int64_t splits = attend_splits(key_set(p, j, rows, r));
      for (int64_t s = 0; s < splits; ++s, ++u) unit_row[u] = r, unit_h0[u] = s, unit_h1[u] = -1;
      continue;
    }
    const int64_t block = j.len <= kShortChunk ? short_block : h_n;
    for (int64_t h = 0; h < h_n; h += block, ++u)
      unit_row[u] = r, unit_h0[u] = h, unit_h1[u] = std::min(h_n, h + block);
  }
  n_units = u;
#pragma omp parallel for schedule(dynamic)
  for (int64_t u = 0; u < n_units; ++u) {
    const int64_t r = unit_row[u];
    const Job& j = jobs[rows.job_of[r]];
    const KeySet ks = key_set(p, j, rows, r);
    if (unit_h1[u] < 0) {
      const int64_t at = part_at[r] + unit_h0[u];
      attend_part(p, &pr.up[r * p.n_up], ks, unit_h0[u], &parts[at * h_n * hd], &part_m[at * h_n], &part_l[at * h_n]);
      continue;
    }
    const MassOut mo = j.map ? map_out(j, r, rows.pos[r], ks.n_window) : MassOut{};
    attend(p, &pr.up[r * p.n_up], ks, unit_h0[u], unit_h1[u], &o[r * h_n * hd], j.map ? &mo : nullptr);
  }
  if (n_parts == 0) return;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t r = 0; r < rows.n; ++r)
    for (int64_t h = 0; h < h_n; h += short_block) {
      if (part_at[r] < 0) continue;
      const int64_t at = part_at[r], splits = attend_splits(key_set(p, jobs[rows.job_of[r]], rows, r));
      attend_merge(p, splits, &parts[at * h_n * hd], &part_m[at * h_n], &part_l[at * h_n], h,
                   std::min(h_n, h + short_block), &o[r * h_n * hd]);
    }
}

// Up to the attention in stage order: project, then window + compress, then
// (CSA) the indexer's scores, top-k and the gather.
void prepare(const PackedLayer& p, std::vector<Job>& jobs, const Rows& rows, Projected& pr, StageTimes* times) {
  {
    Stage s(times, &StageTimes::project);
    if (jobs.front().projected) {  // the x-side rows are given: the queries' half only
      pr.rows = rows.n;
      pr.in.get(static_cast<size_t>(rows.n * p.n_in));
      for (const Job& j : jobs) std::memcpy(&pr.in[j.row0 * p.n_in], j.projected, j.len * p.n_in * sizeof(float));
      project_queries(p, rows.n, rows.pos, rows.groups, pr);
    } else {
      project(p, rows.x, rows.n, rows.pos, rows.groups, pr);
    }
    if (p.deployed() && p.w->indexer) round_index_queries(p, pr, rows.n);
  }
  {
    Stage s(times, &StageTimes::compress);
    for (Job& j : jobs) {
      gather_window(p, pr, j);
      compress(p, pr, j);
    }
  }
  if (p.w->indexer) {
    StageTimes scratch;
    for (Job& j : jobs) index(p, pr, rows.pos, j, times ? *times : scratch);
    Stage s(times, &StageTimes::attention);
    gather_short_chunks(p, jobs);
  }
}

// stream.run(side, need), the project stage charged the time beyond the side's (which times itself).
void run_beside(RowStream& stream, const std::function<void()>& side, size_t need, StageTimes* times) {
  double side_s = 0;
  const double t0 = omp_get_wtime();
  stream.run(
      [&] {
        const double s0 = omp_get_wtime();
        side();
        side_s = omp_get_wtime() - s0;
      },
      need);
  if (times) times->project += omp_get_wtime() - t0 - side_s;
}

// Whether the indexer's scores on one thread last about as long as q's rows
// take to stream on the others, or less: at most kBesideMacsPerByte
// multiply-adds per byte of the c_q-side weights (the integer scorer does
// ~170 G/s on one thread, one thread streams ~20 GB/s: 65,536 tokens, 134 M
// multiply-adds against 40 MB, fit; at 1M the scores, 2.1 G, run on all
// threads after the stream). Sizes only: the bits are the same either way.
constexpr double kBesideMacsPerByte = 8;
bool index_fits_beside(const PackedLayer& p, const std::vector<Job>& jobs, const Rows& rows) {
  double macs = 0;
  for (const Job& j : jobs) {
    if (j.len == 0) continue;
    const int64_t eligible =
        std::min(j.st->indexer().emitted, (rows.pos[j.row0 + j.len - 1] + 1) / p.c.compress_rate_csa);
    macs += static_cast<double>(j.len) * static_cast<double>(eligible) *
            static_cast<double>(p.c.index_n_heads * p.c.index_head_dim);
  }
  return macs <= kBesideMacsPerByte * static_cast<double>(p.w_up.bytes());
}

// prepare() for calls of short chunks only (decode, serving) in deployment
// numerics: the same computations, ordered so that the weights keep streaming
// while the stages that read little and run mostly on one thread run on one
// thread beside the c_q-side projection. Its rows go indexer queries (W_Iqb)
// first, then q's (W_qb), which nothing before the attention reads: compress
// runs beside the first ones (and as many of q's as it lasts), the indexer,
// its top-k and the gather beside the rest where the scores are short enough
// (index_fits_beside), else after it on all threads. In the reference
// numerics the fp32 scorer on one thread outlasts the stream and the A/B
// showed no gain (docs/performance.md, "Decode beside the weight stream").
void prepare_beside(const PackedLayer& p, std::vector<Job>& jobs, const Rows& rows, Projected& pr, StageTimes* times) {
  {
    Stage s(times, &StageTimes::project);
    project(p, rows.x, rows.n, rows.pos, rows.groups, pr, false);
    pr.up.get(static_cast<size_t>(rows.n * p.n_up));
  }
  const auto compress_all = [&] {
    Stage s(times, &StageTimes::compress);
    for (Job& j : jobs) {
      gather_window(p, pr, j);
      compress(p, pr, j);
    }
  };
  const auto index_all = [&] {
    StageTimes scratch;
    for (Job& j : jobs) index(p, pr, rows.pos, j, times ? *times : scratch);
    Stage s(times, &StageTimes::attention);
    gather_short_chunks(p, jobs);
  };
  const int64_t nq = p.off_index_q;  // q's rows; the indexer queries' follow
  RowStream up(rows.groups, pr.in.data(), p.n_in, p.w_up, pr.up.data(), p.n_up);
  const size_t index_rows = up.add(nq, p.n_up - nq), all = up.add(0, nq);
  run_beside(up, compress_all, index_rows, times);
  if (p.w->indexer) {
    Stage s(times, &StageTimes::project);
    finish_queries(p, rows.n, rows.pos, pr, false, true);
    round_index_queries(p, pr, rows.n);
  }
  const bool index_beside = p.w->indexer && index_fits_beside(p, jobs, rows);
  run_beside(
      up, index_beside ? std::function<void()>(index_all) : [] {}, all, times);
  {
    Stage s(times, &StageTimes::project);
    finish_queries(p, rows.n, rows.pos, pr, true, false);
  }
  if (p.w->indexer && !index_beside) index_all();
}

// One call: every job's chunk through the stages, in pipeline order.
void run(const PackedLayer& p, std::vector<Job>& jobs, StageTimes* times) {
  thread_local Workspace ws;
  const Config& c = p.c;
  const int64_t d = c.hidden_size;
  const Rows rows = lay_out(p, jobs, ws);
  Projected& pr = ws.pr;
  const bool short_only =
      std::all_of(rows.groups.begin(), rows.groups.end(), [](const RowGroup& g) { return g.rowwise; });
  if (short_only && !jobs.front().projected && p.deployed())
    prepare_beside(p, jobs, rows, pr, times);
  else
    prepare(p, jobs, rows, pr, times);
  if (p.type == LayerType::hca)  // read in place, or decoded once per chunk for all its queries, or per run
    for (Job& j : jobs) {
      const RowStore& e = j.st->compressor().entries;
      const bool per_run = split_by_keys(p, j) && e.format() != RowStore::Format::f32;
      j.hca_entries = per_run ? nullptr : e.rows_f32(j.st->compressor().emitted, *j.decoded);
    }
  float* o = ws.o.get(static_cast<size_t>(rows.n * c.num_attention_heads * c.head_dim));
  for (const Job& j : jobs)
    if (j.map) start_map(p, j);
  {
    Stage s(times, &StageTimes::attention);
    attend_rows(p, jobs, rows, pr, ws, o);
  }
  float* out = ws.out.get(static_cast<size_t>(rows.n * d));
  float* grouped = ws.grouped.get(static_cast<size_t>(rows.n * c.o_groups * c.o_lora_rank));
  {
    Stage s(times, &StageTimes::output);
    output_project(p, o, rows.n, rows.pos, rows.groups, grouped, out);
  }
  for (Job& j : jobs) {
    std::memcpy(j.out, &out[j.row0 * d], j.len * d * sizeof(float));
    if (j.dbg) fill_debug(p, pr, j);
    if (j.tape) record_tape(p, j, o, grouped);
    keep_window(j);
    j.st->advance(j.len);
  }
}

// The rows of one step of a split call: as many as keep a row's activations
// (x and out, the projections, the attention output, the grouped projection)
// within kStepBytes, so that a stage's output is still in the cache when the
// next stage reads it — with V4's widths a row holds ~300 KB, so one piece;
// with narrow ones (a 256-wide sliding layer, 5 KB a row) 4,096 rows (20 MB)
// made the attention ~6% slower than one 1,024-token piece (docs/packing.md).
int64_t step_rows(const PackedLayer& p) {
  const Config& c = p.c;
  const int64_t row_bytes =
      static_cast<int64_t>(sizeof(float)) *
      (2 * c.hidden_size + p.n_in + p.n_up + c.num_attention_heads * c.head_dim + c.o_groups * c.o_lora_rank);
  return std::clamp(kStepBytes / row_bytes, kPrefillChunk, kMaxStepRows);
}

}  // namespace

// Long chunks run in pieces of at most kPrefillChunk tokens per sequence: each
// piece continues the state, so the result is the same (to rounding) and the
// activations stay bounded. A sequence's pieces are the same whatever else is
// in the call (it equals a call with it alone, bit for bit); a step takes the
// next piece of as many sequences as fit in step_rows (packed documents:
// memory as for a few sequences, not for all). Debug output and maps need the
// whole chunk in one piece.
void run_jobs(const PackedLayer& p, std::vector<Job>& jobs, StageTimes* times) {
  const int64_t d = p.c.hidden_size, chunk = kPrefillChunk, budget = step_rows(p);
  // Before any state moves: a rejected call leaves every state as it was.
  int64_t rows = 0;
  for (size_t k = 0; k < jobs.size(); ++k) {
    if (jobs[k].x) check_finite(jobs[k].x, jobs[k].len * d, "input hidden_states of sequence " + std::to_string(k));
    rows += jobs[k].len;
  }
  const bool split =
      std::all_of(jobs.begin(), jobs.end(), [](const Job& j) { return !j.dbg && !j.map; }) &&
      (rows > budget || std::any_of(jobs.begin(), jobs.end(), [&](const Job& j) { return j.len > chunk; }));
  if (!split) return run(p, jobs, times);
  std::vector<int64_t> done(jobs.size(), 0);
  for (;;) {
    std::vector<Job> piece;
    int64_t piece_rows = 0;
    for (size_t k = 0; k < jobs.size(); ++k) {
      const int64_t n = std::min(chunk, jobs[k].len - done[k]);
      if (n <= 0 || (!piece.empty() && piece_rows + n > budget)) continue;
      piece.emplace_back(jobs[k].x ? jobs[k].x + done[k] * d : nullptr, n, jobs[k].st, jobs[k].out + done[k] * d);
      piece.back().tape = jobs[k].tape;
      if (jobs[k].projected) piece.back().projected = jobs[k].projected + done[k] * p.n_in;
      done[k] += n, piece_rows += n;
    }
    if (piece.empty()) return;
    run(p, piece, times);
  }
}

}  // namespace dsv4
