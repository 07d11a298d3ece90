// The Layer: packs weights once, then runs chunks of one or many sequences
// through the pipeline stages, each sequence through its own state.
#include "dsv4/layer.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include <omp.h>

#include "io/weight_table.h"
#include "ops/quant.h"
#include "pipeline/pipeline.h"
#include "train/tape.h"

namespace dsv4 {
namespace {

// One sequence's chunk within a call.
struct Job {
  Job() = default;
  Job(const float* x_, int64_t len_, LayerState* st_, float* out_, Intermediates* dbg_)
      : x(x_), len(len_), st(st_), out(out_), dbg(dbg_) {}
  const float* x = nullptr;
  int64_t len = 0;
  LayerState* st = nullptr;
  float* out = nullptr;
  Intermediates* dbg = nullptr;
  AttentionMap* map = nullptr;  // Layer::attention_map
  SeqTape* tape = nullptr;      // Layer::forward_train
  bool dense_map = false;
  // filled while running
  int64_t row0 = 0, p0 = 0, n_cached = 0;
  Scratch<float>* kwin = nullptr;    // [n_cached + len, D]: cached window rows, then this chunk's kv
  Scratch<int32_t>* topk = nullptr;  // CSA: [len, width]
  int64_t width = 0;
  // Deployment numerics: this chunk's kv rows encoded [len, row bytes]; HCA
  // entries and CSA indexer keys dequantised (reference numerics: unused).
  Scratch<uint8_t>* kcoded = nullptr;
  Scratch<float>* entries = nullptr;
  Scratch<float>* picked = nullptr;  // CSA short chunk: each row's selected entries, gathered once
};

// Window rows this chunk may read: the cached last min(p0, W-1) rows in position order, then the new ones.
// In deployment numerics the cached rows are decoded and the new ones encoded
// (into j.kcoded) and read back dequantised.
void gather_window(const PackedLayer& p, Projected& pr, Job& j) {
  const int64_t hd = p.c.head_dim, slots = j.st->window_slots();
  const size_t rb = j.st->window_row_bytes();
  j.n_cached = std::min(j.p0, slots);
  float* kwin = j.kwin->get(static_cast<size_t>((j.n_cached + j.len) * hd));
  for (int64_t i = 0; i < j.n_cached; ++i) {
    const int64_t slot = (j.p0 - j.n_cached + i) % slots;
    if (rb)
      decode_rows(p, false, &j.st->window_coded()[slot * rb], 1, &kwin[i * hd]);
    else
      std::memcpy(&kwin[i * hd], &j.st->window()[slot * hd], hd * sizeof(float));
  }
  uint8_t* coded = rb ? j.kcoded->get(j.len * rb) : nullptr;
  for (int64_t i = 0; i < j.len; ++i) {
    float* kv = &pr.in[(j.row0 + i) * p.n_in + p.off_kv];
    if (rb)
      encode_row(p, false, kv, coded + i * rb, &kwin[(j.n_cached + i) * hd]);
    else
      std::memcpy(&kwin[(j.n_cached + i) * hd], kv, hd * sizeof(float));
  }
}

// The chunk's last min(len, W-1) rows into the ring (cached rows are already there).
void keep_window(const PackedLayer& p, Job& j) {
  const int64_t hd = p.c.head_dim, slots = j.st->window_slots(), end = j.p0 + j.len;
  const size_t rb = j.st->window_row_bytes();
  for (int64_t pos = std::max(j.p0, end - slots); pos < end; ++pos) {
    const int64_t slot = pos % slots, i = pos - j.p0;
    if (rb)
      std::memcpy(&j.st->window_coded()[slot * rb], &(*j.kcoded)[i * rb], rb);
    else
      std::memcpy(&j.st->window()[slot * hd], &(*j.kwin)[(j.n_cached + i) * hd], hd * sizeof(float));
  }
}

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

void compress(const PackedLayer& p, const Projected& pr, Job& j) {
  const LayerWeights& w = *p.w;
  if (w.compressor)
    compress_feed(p, *w.compressor, j.st->compressor(), &pr.in[j.row0 * p.n_in + p.off_cc],
                  &pr.in[j.row0 * p.n_in + p.off_cz], p.n_in, j.len, false);
  if (w.indexer)
    compress_feed(p, w.indexer->compressor, j.st->indexer(), &pr.in[j.row0 * p.n_in + p.off_ic],
                  &pr.in[j.row0 * p.n_in + p.off_iz], p.n_in, j.len, true);
}

void index(const PackedLayer& p, const Projected& pr, const int64_t* pos, Job& j, StageTimes& t) {
  const CompressorState& ix = j.st->indexer();
  j.width = std::min(p.c.index_topk, ix.emitted);
  j.topk->get(static_cast<size_t>(j.len * j.width));
  const float* keys = entries_f32(p, ix, ix.emitted, true, *j.entries);
  index_topk(p, pr, j.row0, j.len, pos + j.row0, keys, ix.emitted, j.width, j.topk->data(), &t.index_scores,
             &t.topk);
}

// CSA short chunks (decode, serving batches): each query's selected entries are
// gathered (deployment numerics: decoded) once, in index order as attend would,
// and shared by all of its head blocks instead of gathered by each.
bool gathers_picked(const PackedLayer& p, const Job& j) { return p.type == LayerType::csa && j.len <= kShortChunk; }
void gather_picked(const PackedLayer& p, const Job& j, int64_t i) {
  const int64_t hd = p.c.head_dim, r = p.c.qk_rope_head_dim;
  const CompressorState& cs = j.st->compressor();
  float* out = j.picked->data() + i * j.width * hd;
  thread_local std::vector<int32_t> sel;
  const int32_t* row = j.topk->data() + i * j.width;
  sel.assign(row, row + j.width);
  sel.erase(std::remove(sel.begin(), sel.end(), -1), sel.end());
  std::sort(sel.begin(), sel.end());
  for (size_t k = 0; k < sel.size(); ++k)
    if (cs.row_bytes)
      quant::kv_row_decode(&cs.coded[sel[k] * cs.row_bytes], hd, r, out + static_cast<int64_t>(k) * hd);
    else
      std::copy_n(&cs.entries[sel[k] * hd], hd, out + static_cast<int64_t>(k) * hd);
}
void gather_all_picked(const PackedLayer& p, std::vector<Job>& jobs) {
  thread_local std::vector<std::pair<const Job*, int64_t>> list;  // (job, row of the job)
  auto& rows = list;  // the calling thread's, shared with the team below
  rows.clear();
  for (Job& j : jobs) {
    if (!gathers_picked(p, j)) continue;
    j.picked->get(static_cast<size_t>(std::max<int64_t>(j.len * j.width, 1) * p.c.head_dim));
    for (int64_t i = 0; i < j.len; ++i) rows.emplace_back(&j, i);
  }
#pragma omp parallel for schedule(dynamic)
  for (size_t t = 0; t < rows.size(); ++t) gather_picked(p, *rows[t].first, rows[t].second);
}

// The compressed keys of one query (CSA: its selection of the entries).
void entry_keys(const PackedLayer& p, const Job& j, int64_t r, int64_t t, KeySet& ks) {
  const CompressorState& cs = j.st->compressor();
  if (p.type == LayerType::hca) {
    ks.entries = cs.row_bytes ? j.entries->data() : cs.entries.data();
    ks.n_entries = std::min(cs.emitted, (t + 1) / p.rate);
  }
  if (p.type == LayerType::csa) {
    ks.entries = cs.entries.data();
    ks.coded = cs.row_bytes ? cs.coded.data() : nullptr;
    ks.row_bytes = cs.row_bytes;
    ks.selected = j.topk->data() + (r - j.row0) * j.width;  // width 0: no entries yet
    ks.n_entries = j.width;
    if (gathers_picked(p, j) && !j.map) {  // (a map needs the entries' ids: attend gathers them)
      ks.entries = j.picked->data() + (r - j.row0) * j.width * p.c.head_dim;
      ks.n_entries = std::count_if(ks.selected, ks.selected + j.width, [](int32_t e) { return e >= 0; });
      ks.selected = nullptr, ks.coded = nullptr;
    }
  }
}

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
  Scratch<float> buf;
  const CompressorState& cs = j.st->compressor();
  const float* e = entries_f32(p, cs, cs.emitted, false, buf);
  d.compressed_kv = Tensor({cs.emitted, cs.width}, std::vector<float>(e, e + cs.emitted * cs.width));
  if (!p.w->indexer) return;
  const CompressorState& ix = j.st->indexer();
  const int64_t hi = c.index_n_heads, di = c.index_head_dim, n_t = ix.emitted;
  d.indexer_q = Tensor({s, hi, di});
  for (int64_t t = 0; t < s; ++t)
    std::memcpy(&d.indexer_q.data[t * hi * di], &pr.up[(j.row0 + t) * p.n_up + p.off_iq], hi * di * sizeof(float));
  const float* keys = entries_f32(p, ix, n_t, true, buf);
  d.indexer_kv = Tensor({n_t, di}, std::vector<float>(keys, keys + n_t * di));
  d.index_scores = Tensor({s, n_t});
  index_scores_dense(p, pr, j.row0, s, d.indexer_kv.ptr(), n_t, d.index_scores.ptr());
  d.topk.shape = {s, j.width};
  d.topk.data.assign(j.topk->data(), j.topk->data() + j.len * j.width);
}

// What the backward cannot recompute cheaply, at the chunk's positions:
// window rows, the CSA selection, o (de-rotated) and the grouped projection.
void record_tape(const PackedLayer& p, const Job& j, const float* o, const float* grouped) {
  const Config& c = p.c;
  const int64_t hd = c.head_dim, ho = c.num_attention_heads * hd, gd = c.o_groups * c.o_lora_rank;
  SeqTape& t = *j.tape;
  std::memcpy(&t.o[j.p0 * ho], &o[j.row0 * ho], j.len * ho * sizeof(float));
  std::memcpy(&t.grouped[j.p0 * gd], &grouped[j.row0 * gd], j.len * gd * sizeof(float));
  std::memcpy(&t.kv[j.p0 * hd], &(*j.kwin)[j.n_cached * hd], j.len * hd * sizeof(float));
  for (int64_t i = 0; i < j.len && t.width > 0; ++i)  // CSA with entries (width = min(k, S / m))
    std::copy_n(j.topk->data() + i * j.width, j.width, t.topk.data() + (j.p0 + i) * t.width);
}

// Sizes a job's attention map before the attention stage fills it.
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

constexpr int64_t kDecodeHeadSplit = 8;  // head blocks per query of a short chunk

// Per calling thread, reused across calls (see Scratch).
struct Workspace {
  Scratch<float> x, o, grouped, out;
  Scratch<int64_t> pos;
  Scratch<int32_t> job_of;
  Scratch<int64_t> unit_row, unit_h0, unit_h1;  // attention work items
  Projected pr;
  std::vector<Scratch<float>> kwin, entries, picked;  // per job
  std::vector<Scratch<int32_t>> topk;
  std::vector<Scratch<uint8_t>> kcoded;
};

void run(const PackedLayer& p, std::vector<Job>& jobs, StageTimes* times) {
  thread_local Workspace ws;
  const Config& c = p.c;
  const int64_t d = c.hidden_size, hd = c.head_dim, h_n = c.num_attention_heads;
  // Short chunks first: their rows form the one row-invariant GEMM group.
  std::stable_partition(jobs.begin(), jobs.end(), [](const Job& j) { return j.len <= kShortChunk; });
  int64_t rows = 0;
  std::vector<RowGroup> groups;
  if (ws.kwin.size() < jobs.size()) {
    ws.kwin.resize(jobs.size()), ws.topk.resize(jobs.size());
    ws.entries.resize(jobs.size()), ws.kcoded.resize(jobs.size()), ws.picked.resize(jobs.size());
  }
  for (size_t k = 0; k < jobs.size(); ++k) {
    Job& j = jobs[k];
    j.kwin = &ws.kwin[k];
    j.topk = &ws.topk[k];
    j.entries = &ws.entries[k];
    j.kcoded = &ws.kcoded[k];
    j.picked = &ws.picked[k];
    j.row0 = rows;
    j.p0 = j.st->position();
    if (j.len > kShortChunk)
      groups.push_back({rows, j.len, false});
    else if (groups.empty())
      groups.push_back({0, j.len, true});
    else
      groups.back().rows += j.len;
    rows += j.len;
  }
  float* x = ws.x.get(static_cast<size_t>(rows * d));
  int64_t* pos = ws.pos.get(static_cast<size_t>(rows));
  int32_t* job_of = ws.job_of.get(static_cast<size_t>(rows));
  for (size_t k = 0; k < jobs.size(); ++k) {
    const Job& j = jobs[k];
    std::memcpy(&x[j.row0 * d], j.x, j.len * d * sizeof(float));
    for (int64_t i = 0; i < j.len; ++i) {
      pos[j.row0 + i] = j.p0 + i;
      job_of[j.row0 + i] = static_cast<int32_t>(k);
    }
  }

  Projected& pr = ws.pr;
  {
    Stage s(times, &StageTimes::project);
    project(p, x, rows, pos, groups, pr);
    if (p.deployed() && p.w->indexer) round_index_queries(p, pr, rows);
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
    for (Job& j : jobs) index(p, pr, pos, j, times ? *times : scratch);
    Stage s(times, &StageTimes::attention);
    gather_all_picked(p, jobs);
  }
  if (p.deployed() && p.type == LayerType::hca)  // decoded once per chunk, read by all its queries
    for (Job& j : jobs) entries_f32(p, j.st->compressor(), j.st->compressor().emitted, false, *j.entries);

  // Attention per (query, head block). All heads of a query share its keys, so
  // a block is two GEMMs. Short chunks (decode) split the heads so every thread
  // works; the split depends on the chunk alone, never on the thread count or
  // the other chunks of the call.
  const int64_t short_block = (h_n + kDecodeHeadSplit - 1) / kDecodeHeadSplit;
  int64_t* unit_row = ws.unit_row.get(static_cast<size_t>(rows * kDecodeHeadSplit));
  int64_t* unit_h0 = ws.unit_h0.get(static_cast<size_t>(rows * kDecodeHeadSplit));
  int64_t* unit_h1 = ws.unit_h1.get(static_cast<size_t>(rows * kDecodeHeadSplit));
  int64_t n_units = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t block = jobs[job_of[r]].len <= kShortChunk ? short_block : h_n;
    for (int64_t h = 0; h < h_n; h += block, ++n_units)
      unit_row[n_units] = r, unit_h0[n_units] = h, unit_h1[n_units] = std::min(h_n, h + block);
  }
  float* o = ws.o.get(static_cast<size_t>(rows * h_n * hd));
  for (const Job& j : jobs)
    if (j.map) start_map(p, j);
  {
    Stage s(times, &StageTimes::attention);
#pragma omp parallel for schedule(dynamic)
    for (int64_t u = 0; u < n_units; ++u) {
      const int64_t r = unit_row[u];
      const Job& j = jobs[job_of[r]];
      const int64_t t = pos[r], at = j.n_cached + (r - j.row0);  // row of t in kwin
      const int64_t lo = std::max<int64_t>(0, at - c.sliding_window + 1);
      KeySet ks;
      ks.window = &(*j.kwin)[lo * hd];
      ks.n_window = at - lo + 1;
      entry_keys(p, j, r, t, ks);
      const MassOut mo = j.map ? map_out(j, r, t, ks.n_window) : MassOut{};
      attend(p, &pr.up[r * p.n_up], ks, unit_h0[u], unit_h1[u], &o[r * h_n * hd], j.map ? &mo : nullptr);
    }
  }
  float* out = ws.out.get(static_cast<size_t>(rows * d));
  {
    Stage s(times, &StageTimes::output);
    output_project(p, o, rows, pos, groups, ws.grouped.get(static_cast<size_t>(rows * c.o_groups * c.o_lora_rank)),
                   out);
  }
  for (Job& j : jobs) {
    std::memcpy(j.out, &out[j.row0 * d], j.len * d * sizeof(float));
    if (j.dbg) fill_debug(p, pr, j);
    if (j.tape) record_tape(p, j, o, ws.grouped.data());
    keep_window(p, j);
    j.st->advance(j.len);
  }
}

// Long chunks run in pieces of at most kPrefillChunk tokens per sequence: each
// piece continues the state, so the result is the same (to rounding) and the
// activations stay bounded. Debug output and maps need the whole chunk in one piece.
void run_split(const PackedLayer& p, std::vector<Job>& jobs, StageTimes* times) {
  const int64_t d = p.c.hidden_size, chunk = Layer::kPrefillChunk;
  // Before any state moves: a rejected call leaves every state as it was.
  for (size_t k = 0; k < jobs.size(); ++k)
    check_finite(jobs[k].x, jobs[k].len * d, "input hidden_states of sequence " + std::to_string(k));
  const bool split = std::all_of(jobs.begin(), jobs.end(), [](const Job& j) { return !j.dbg && !j.map; }) &&
                     std::any_of(jobs.begin(), jobs.end(), [&](const Job& j) { return j.len > chunk; });
  if (!split) return run(p, jobs, times);
  std::vector<int64_t> done(jobs.size(), 0);
  for (;;) {
    std::vector<Job> piece;
    for (size_t k = 0; k < jobs.size(); ++k) {
      const int64_t n = std::min(chunk, jobs[k].len - done[k]);
      if (n > 0) piece.emplace_back(jobs[k].x + done[k] * d, n, jobs[k].st, jobs[k].out + done[k] * d, nullptr);
      if (n > 0) piece.back().tape = jobs[k].tape;
      done[k] += n;
    }
    if (piece.empty()) return;
    run(p, piece, times);
  }
}

}  // namespace

void check_finite(const float* x, int64_t n, const std::string& what) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) {
      if (first < 0) first = i;
      ++bad;
    }
  if (bad) fail(what + ": " + std::to_string(bad) + " non-finite value(s), first at flat index " + std::to_string(first));
}

std::string_view weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::f32: return "f32";
    case WeightFormat::bf16: return "bf16";
    case WeightFormat::native: return "native";
  }
  return "?";
}

WeightFormat parse_weight_format(std::string_view s) {
  for (WeightFormat f : {WeightFormat::f32, WeightFormat::bf16, WeightFormat::native})
    if (s == weight_format_name(f)) return f;
  fail("weights format: expected 'f32', 'bf16' or 'native', got '" + std::string(s) + "'");
}

Layer::Layer(Config config, LayerType type, LayerWeights weights, LayerOptions options)
    : config_(std::move(config)), type_(type), weights_(std::move(weights)) {
  config_.validate();
  validate_weights(weights_, config_, type_);
  const int64_t di = config_.index_head_dim;
  if (options.numerics == Numerics::deployment && type_ == LayerType::csa && !std::has_single_bit(static_cast<uint64_t>(di)))
    fail("deployment numerics: index_head_dim must be a power of two for the indexer's Hadamard transform (got " +
         std::to_string(di) + ")");
  if (options.weights != WeightFormat::native) {  // f32 / bf16: from the dequantised values
    for (auto& [name, m] : weights_.stored) *weight_slot(weights_, name) = m.dequantised();
    weights_.stored.clear();
  }
  packed_ = std::make_unique<PackedLayer>(pack_layer(config_, type_, weights_, options.weights == WeightFormat::bf16));
  packed_->numerics = options.numerics;
  weights_.stored.clear();
  // The packed matrices are the only copy: release the originals.
  for (Tensor* t : {&weights_.q_a_proj, &weights_.q_b_proj, &weights_.kv_proj, &weights_.o_a_proj, &weights_.o_b_proj})
    *t = Tensor();
  if (weights_.compressor) weights_.compressor->kv_proj = Tensor(), weights_.compressor->gate_proj = Tensor();
  if (weights_.indexer) {
    IndexerWeights& ix = *weights_.indexer;
    ix.compressor.kv_proj = Tensor(), ix.compressor.gate_proj = Tensor();
    ix.q_b_proj = Tensor(), ix.weights_proj = Tensor();
  }
}

size_t Layer::weight_bytes() const {
  size_t n = weights_.q_a_norm.data.size() + weights_.kv_norm.data.size() + weights_.sinks.data.size();
  for (const CompressorWeights* c : {weights_.compressor ? &*weights_.compressor : nullptr,
                                     weights_.indexer ? &weights_.indexer->compressor : nullptr})
    if (c) n += c->position_bias.data.size() + c->kv_norm.data.size();
  return n * sizeof(float) + packed_->bytes();
}

Layer::~Layer() = default;
Layer::Layer(Layer&& o) noexcept
    : config_(std::move(o.config_)), type_(o.type_), weights_(std::move(o.weights_)), packed_(std::move(o.packed_)) {
  if (packed_) packed_->w = &weights_;
}
Layer& Layer::operator=(Layer&& o) noexcept {
  config_ = std::move(o.config_);
  type_ = o.type_;
  weights_ = std::move(o.weights_);
  packed_ = std::move(o.packed_);
  if (packed_) packed_->w = &weights_;
  return *this;
}

LayerState Layer::new_state() const { return LayerState(config_, type_, packed_->numerics); }
Numerics Layer::numerics() const { return packed_->numerics; }

namespace {

// One-shot input: [B, S, d], or [S, d] for one sequence. Returns it as [B, S, d].
Shape batch_shape(const TensorView& x, int64_t d) {
  const size_t n = x.shape.size();
  if ((n != 2 && n != 3) || x.shape.back() != d)
    fail("input hidden_states: expected shape [B, S, " + std::to_string(d) + "] or [S, " + std::to_string(d) +
         "], got " + shape_str(x.shape));
  return n == 3 ? x.shape : Shape{1, x.dim(0), d};
}

}  // namespace

Tensor Layer::forward(TensorView x, std::vector<Intermediates>* debug, StageTimes* times) const {
  const Shape shape = batch_shape(x, config_.hidden_size);
  const int64_t b = shape[0], s = shape[1], d = shape[2];
  std::vector<LayerState> states(static_cast<size_t>(b), new_state());
  Tensor out(x.shape);
  if (debug) debug->assign(static_cast<size_t>(b), {});
  std::vector<Job> jobs(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i)
    jobs[i] = Job(x.data + i * s * d, s, &states[i], out.ptr() + i * s * d, debug ? &(*debug)[i] : nullptr);
  if (s > 0) run_split(*packed_, jobs, times);
  return out;
}

Tensor Layer::forward_train(TensorView x, Tape& tape) const {
  if (numerics() == Numerics::deployment)
    fail("forward_train: deployment numerics round to FP8/FP4, which has no gradient; build the layer with "
         "reference numerics for training");
  const Shape shape = batch_shape(x, config_.hidden_size);
  const int64_t b = shape[0], s = shape[1], d = shape[2];
  std::unique_ptr<TapeData> data = std::move(tape.d_);  // an earlier tape's memory is reused
  if (!data) data = std::make_unique<TapeData>();
  data->layer = packed_.get();
  data->x_shape = x.shape;
  data->x.assign(x.data, x.data + b * s * d);
  std::vector<LayerState> states(static_cast<size_t>(b), new_state());
  Tensor out(x.shape);
  std::vector<Job> jobs(static_cast<size_t>(b));
  data->seqs.resize(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i) {
    size_seq_tape(*packed_, s, data->seqs[i]);
    jobs[i] = Job(x.data + i * s * d, s, &states[i], out.ptr() + i * s * d, nullptr);
    jobs[i].tape = &data->seqs[i];
  }
  if (s > 0) run_split(*packed_, jobs, nullptr);
  for (int64_t i = 0; i < b && packed_->rate; ++i) {
    const CompressorState& cs = states[i].compressor();
    data->seqs[i].entries.assign(cs.entries.begin(), cs.entries.begin() + cs.emitted * cs.width);
  }
  tape.d_ = std::move(data);
  return out;
}

std::vector<AttentionMap> Layer::attention_map(TensorView x, bool dense) const {
  const Shape shape = batch_shape(x, config_.hidden_size);
  const int64_t b = shape[0], s = shape[1], d = shape[2];
  std::vector<LayerState> states(static_cast<size_t>(b), new_state());
  std::vector<AttentionMap> maps(static_cast<size_t>(b));
  Tensor out({s, d});  // per sequence, overwritten: only the maps are kept
  std::vector<Job> jobs(1);
  for (int64_t i = 0; i < b && s > 0; ++i) {
    jobs[0] = Job(x.data + i * s * d, s, &states[i], out.ptr(), nullptr);
    jobs[0].map = &maps[i], jobs[0].dense_map = dense;
    run_split(*packed_, jobs, nullptr);
  }
  return maps;
}

AttentionMap Layer::attention_map(TensorView x, LayerState& state, bool dense) const {
  const int64_t d = config_.hidden_size;
  if (!((x.shape.size() == 2 && x.dim(1) == d) || (x.shape.size() == 3 && x.dim(0) == 1 && x.dim(2) == d)))
    fail("attention_map: expected a chunk [S, " + std::to_string(d) + "] or [1, S, " + std::to_string(d) + "], got " +
         shape_str(x.shape));
  if (!state.fits(config_, type_, numerics()))
    fail("attention_map: the state was made for another layer (type, dimensions or numerics)");
  AttentionMap map;
  Tensor out({x.numel() / d, d});  // only the map is kept
  std::vector<Job> jobs{Job(x.data, x.numel() / d, &state, out.ptr(), nullptr)};
  jobs[0].map = &map, jobs[0].dense_map = dense;
  if (jobs[0].len > 0) run_split(*packed_, jobs, nullptr);
  return map;
}

Tensor Layer::forward(TensorView x, LayerState& state, Intermediates* debug, StageTimes* times) const {
  const TensorView xs[] = {x};
  LayerState* sts[] = {&state};
  std::vector<Intermediates> dbg;
  std::vector<Tensor> out = forward_batch(xs, sts, debug ? &dbg : nullptr, times);
  if (debug) *debug = std::move(dbg[0]);
  return std::move(out[0]);
}

std::vector<Tensor> Layer::forward_batch(std::span<const Tensor* const> xs, std::span<LayerState* const> states,
                                         std::vector<Intermediates>* debug, StageTimes* times) const {
  std::vector<TensorView> views;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!xs[i]) fail("forward_batch: input " + std::to_string(i) + " is null");
    views.emplace_back(*xs[i]);
  }
  return forward_batch(std::span<const TensorView>(views), states, debug, times);
}

std::vector<Tensor> Layer::forward_batch(std::span<const TensorView> xs, std::span<LayerState* const> states,
                                         std::vector<Intermediates>* debug, StageTimes* times) const {
  if (xs.size() != states.size())
    fail("forward_batch: " + std::to_string(xs.size()) + " inputs but " + std::to_string(states.size()) + " states");
  const int64_t d = config_.hidden_size;
  std::vector<Tensor> outs(xs.size());
  std::vector<Job> jobs;
  if (debug) debug->assign(xs.size(), {});
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!states[i]) fail("forward_batch: state " + std::to_string(i) + " is null");
    const TensorView& x = xs[i];
    const bool ok = (x.shape.size() == 2 && x.dim(1) == d) || (x.shape.size() == 3 && x.dim(0) == 1 && x.dim(2) == d);
    if (!ok)
      fail("chunk " + std::to_string(i) + ": expected shape [S, " + std::to_string(d) + "] or [1, S, " +
           std::to_string(d) + "], got " + shape_str(x.shape));
    if (states[i]->numerics() != numerics())
      fail("chunk " + std::to_string(i) + ": state has " + std::string(numerics_name(states[i]->numerics())) +
           " numerics, the layer " + std::string(numerics_name(numerics())));
    if (!states[i]->fits(config_, type_, numerics()))
      fail("chunk " + std::to_string(i) + ": state was made for another layer (type " +
           std::string(layer_type_name(states[i]->type())) + " or other dimensions)");
    for (size_t k = 0; k < i; ++k)
      if (states[k] == states[i]) fail("forward_batch: the same state is given twice");
    const int64_t s = x.numel() / d;
    outs[i] = Tensor({s, d});
    if (s > 0) jobs.emplace_back(x.data, s, states[i], outs[i].ptr(), debug ? &(*debug)[i] : nullptr);
  }
  if (!jobs.empty()) run_split(*packed_, jobs, times);
  return outs;
}

}  // namespace dsv4
