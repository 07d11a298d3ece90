// The scheduler's unit: one sequence's chunk in a call (Layer::forward,
// forward_batch, attention_map, forward_train all make Jobs and hand them to
// run_jobs). Internal to the library.
#pragma once
#include <cstdint>
#include <vector>

#include "dsv4/intermediates.h"
#include "dsv4/profile.h"
#include "dsv4/state.h"
#include "pipeline/pipeline.h"
#include "pipeline/tape.h"

namespace dsv4 {

// Long chunks run in pieces of at most this many tokens (Layer::kPrefillChunk).
constexpr int64_t kPrefillChunk = 1024;
// One step of a split call (many sequences) holds the next piece of as many
// sequences as keep its activations within kStepBytes (schedule.cpp step_rows),
// at least one piece's rows and at most four.
constexpr int64_t kStepBytes = int64_t{8} << 20;
constexpr int64_t kMaxStepRows = 4 * kPrefillChunk;

struct Job {
  Job() = default;
  Job(const float* x_, int64_t len_, LayerState* st_, float* out_, Intermediates* dbg_ = nullptr)
      : x(x_), len(len_), st(st_), out(out_), dbg(dbg_) {}
  // The chunk: len tokens x [len, d] at positions st->position() onwards; out [len, d].
  // Or, instead of x, its x-side rows [len, n_in] as project gives them
  // (Layer::forward_projected; every job of the call then has them).
  const float* x = nullptr;
  const float* projected = nullptr;
  int64_t len = 0;
  LayerState* st = nullptr;
  float* out = nullptr;
  // What else to hand back (null: nothing).
  Intermediates* dbg = nullptr;
  AttentionMap* map = nullptr;  // Layer::attention_map
  bool dense_map = false;
  SeqTape* tape = nullptr;  // Layer::forward_train

  // Filled while running.
  int64_t row0 = 0, p0 = 0, n_cached = 0;  // first row in the call's activations; first position; cached window rows
  Scratch<float>* kwin = nullptr;          // [n_cached + len, D]: cached window rows, then this chunk's kv
  RowStore* fresh = nullptr;               // this chunk's kv rows as the window stores them [len rows]
  Scratch<int32_t>* topk = nullptr;        // CSA: [len, width]
  int64_t width = 0;
  std::vector<float>* decoded = nullptr;  // stored rows read as fp32 when the store does not hold fp32
  const float* hca_entries = nullptr;     // HCA: every entry as fp32 [emitted, D]; null: decoded per run
  // CSA short chunk: each row's selected entries, gathered once: ids [len, width], rows [len, width, D]
  Scratch<int32_t>* picked_ids = nullptr;
  Scratch<float>* picked = nullptr;
};

// Runs the chunks through the stages and their states. Checks every input
// first (a rejected call leaves every state as it was); long chunks run in
// pieces of at most kPrefillChunk tokens unless debug output or a map is asked.
void run_jobs(const PackedLayer& p, std::vector<Job>& jobs, StageTimes* times);

// The window ring (window.cpp). gather_window: the rows this chunk may read,
// the cached last min(p0, W-1) in position order, then this chunk's new ones
// (stored into j.fresh in the window's numerics, read back as stored);
// keep_window: the chunk's last min(len, W-1) rows into the ring.
void gather_window(const PackedLayer& p, Projected& pr, Job& j);
void keep_window(Job& j);

// The CSA gather for the attention (gather.cpp): short chunks gather each
// query's selection once for all its head blocks; entry_keys gives one query's
// compressed keys (a long chunk's CSA selection is gathered there, per query).
void gather_short_chunks(const PackedLayer& p, std::vector<Job>& jobs);
void entry_keys(const PackedLayer& p, const Job& j, int64_t r, int64_t t, KeySet& ks);

// Whether a job's queries run split over their keys (attend_part; deployment
// numerics, short chunks, no map) rather than in head blocks (attend).
bool split_by_keys(const PackedLayer& p, const Job& j);

// What a job hands back besides its output (record.cpp).
void fill_debug(const PackedLayer& p, const Projected& pr, const Job& j);
void record_tape(const PackedLayer& p, const Job& j, const float* o, const float* grouped);
void start_map(const PackedLayer& p, const Job& j);  // sizes the map before the attention fills it
MassOut map_out(const Job& j, int64_t r, int64_t t, int64_t n_window);

}  // namespace dsv4
