// The fast path's stages, in pipeline order (schedule.cpp runs them over the
// chunks of a call: pipeline/job.h). Internal to the library.
//
//   project  : one fused GEMM for everything that reads x, one for  project.cpp
//              everything that reads c_q; norms and RoPE per row    (matrix.cpp: packed weights)
//   window   : the ring of kv rows a chunk reads and extends        window.cpp
//   compress : pool complete windows into entries (state carries    compress.cpp
//              the rest)
//   index    : CSA lightning indexer scores + top-k per query       index.cpp
//   attend   : window + compressed keys (CSA: gathered), online     attend.cpp, gather.cpp
//              softmax with the sink
//   output   : de-rotate, grouped projection, o_b projection        output.cpp
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dsv4/config.h"
#include "dsv4/state.h"
#include "dsv4/tensor.h"
#include "dsv4/weights.h"
#include "ops/blas.h"
#include "ops/rope.h"

namespace dsv4 {

// A packed weight matrix [rows, cols]: consecutive row blocks (segments),
// each in one dtype — fp32, bf16 (LayerOptions bf16), or what the checkpoint
// stored (native: FP8 E4M3 + block scales, BF16, F16, F32). The kernels widen
// to fp32 in registers or per tile, so only the weights are rounded.
struct Matrix {
  struct Segment {
    int64_t row0 = 0, rows = 0;
    DType dtype = DType::F32;
    std::vector<float> f32;
    std::vector<uint16_t> half;  // BF16 or F16 bits
    std::vector<uint8_t> fp8;    // F8_E4M3 codes
    std::vector<float> scale;    // FP8: the checkpoint's scale per 128x128 block, [ceil(rows/128), ceil(cols/128)]
    size_t bytes() const;
  };
  int64_t rows = 0, cols = 0;
  std::vector<Segment> segs;
  void append(const Tensor& w);        // fp32 rows at the end
  void append(const StoredMatrix& w);  // rows as stored (FP8 keeps its codes and scales)
  void to_bf16();                      // every fp32 segment: round to nearest even, drop the fp32 copy
  // Rows [row0, row0 + n) as fp32 [n, cols]: a pointer into an fp32 segment
  // that holds them all, else widened (dequantised) into buf.
  const float* dense(int64_t row0, int64_t n, std::vector<float>& buf) const;
  size_t bytes() const;
};

struct PackedLayer {
  Config c;
  LayerType type = LayerType::sliding;
  Numerics numerics = Numerics::reference;
  int64_t rate = 0;  // compress rate (0: sliding)
  std::vector<float> inv_freq;
  // x-side fused weight rows [W_qa; W_kv; W_ckv; W_cg; W_Ikv; W_Ig; W_w]: [n_in, d].
  // Columns of a projected row (Projected::in) from off_*: c_q at 0, kv, the
  // compressor's C (x W_ckvᵀ) and Z (x W_cgᵀ), the indexer compressor's C and
  // Z, the indexer's per-head weights (x W_wᵀ); 0 where the layer has none.
  Matrix w_in;
  int64_t n_in = 0, off_kv = 0, off_comp_c = 0, off_comp_z = 0, off_index_c = 0, off_index_z = 0, off_index_w = 0;
  // c_q-side fused weight rows [W_qb; W_Iqb]: [n_up, r_q]; the indexer's
  // queries (Projected::up) start at off_index_q = H·D.
  Matrix w_up;
  int64_t n_up = 0, off_index_q = 0;
  Matrix w_oa, w_ob;                 // output projections
  int64_t row_of[kNumWeights] = {};  // each projection's first row in its matrix (by WeightId)
  const LayerWeights* w = nullptr;   // norms, biases, sinks (the matrices above are released from it)
  size_t bytes() const { return w_in.bytes() + w_up.bytes() + w_oa.bytes() + w_ob.bytes(); }
  bool deployed() const { return numerics == Numerics::deployment; }
};

// Matrices from w's fp32 tensors or, where w.stored has them, as stored;
// `bf16` rounds the fp32 ones to bf16.
PackedLayer pack_layer(const Config& c, LayerType t, const LayerWeights& w, bool bf16 = false);

// Growable scratch memory: keeps its allocation between calls and is never
// zero-filled, so a warm decode step allocates nothing and touches no new pages.
template <class T>
class Scratch {
 public:
  T* get(size_t n) {
    if (n > cap_) data_.reset(new T[n]), cap_ = n;
    return data_.get();
  }
  T* data() const { return data_.get(); }
  T& operator[](size_t i) const { return data_[i]; }

 private:
  std::unique_ptr<T[]> data_;
  size_t cap_ = 0;
};

// Rows that share the GEMMs of a call: all rows of short chunks (decode) in
// one row-invariant group, each long chunk alone with BLAS. A chunk's results
// then never depend on the other chunks of a call, so a batched call equals
// separate calls bit for bit.
struct RowGroup {
  int64_t row0 = 0, rows = 0;
  bool rowwise = false;
};
constexpr int64_t kShortChunk = 16;  // chunks up to this many tokens go row-invariant

// C[g rows] = A[g rows] · W[w_row0 .. w_row0+n)^T with the group's kernel (k = W.cols);
// a and c point at row 0 of the call.
void linear(const RowGroup& g, int64_t n, const float* a, int64_t lda, const Matrix& w, int64_t w_row0, float* c,
            int64_t ldc);
// The same for every group of a call: the BLAS groups' tiles in one parallel
// region per weight segment (each group cut as if alone: its bits unchanged).
void linear(const std::vector<RowGroup>& groups, int64_t n, const float* a, int64_t lda, const Matrix& w,
            int64_t w_row0, float* c, int64_t ldc);
// The 64-row tiles of products with packed matrices for a call's
// row-invariant groups (others are skipped), each computed as linear()
// computes it, whichever thread takes it and in whatever order: the tiles of
// several products can share one parallel region (a decode step's output
// projection: 8 o_a blocks, then o_b).
class RowTiles {
 public:
  // Queues C[:, 0, n) = A · W[w_row0, w_row0 + n)^T for each row-invariant
  // group (a, c: row 0 of the call); returns the tiles queued so far.
  size_t add(const std::vector<RowGroup>& groups, const float* a, int64_t lda, const Matrix& w, int64_t w_row0,
             int64_t n, float* c, int64_t ldc);
  size_t size() const { return tiles_.size(); }
  void compute(size_t t) const;
  // Every tile, shared by the threads of the enclosing parallel region
  // (worksharing, static; ends at its barrier).
  void share() const;

 private:
  struct Tile {
    const float* a;  // the group's first row
    float* c;        // its output at the segment's row 0
    int64_t lda, ldc, rows, k, j0, j1;
    WeightRows b;  // the segment
  };
  std::vector<Tile> tiles_;
};
// Row ranges of a packed matrix computed as linear() computes them, in
// 64-row tiles that whichever thread is free claims in order, while the
// calling thread runs other work beside them (decode: the weights keep
// streaming while a stage that reads little runs on one thread). Rowwise
// groups only. c points at column 0 of row 0 of the call.
class RowStream {
 public:
  RowStream(const std::vector<RowGroup>& groups, const float* a, int64_t lda, const Matrix& w, float* c, int64_t ldc);
  // Queues c's columns [w_row0, w_row0 + n) (W's rows); returns the tiles queued so far.
  size_t add(int64_t w_row0, int64_t n);
  // Runs side() beside the tiles; returns when it is done and the first
  // `need` tiles are (the others keep taking tiles while it runs).
  void run(const std::function<void()>& side, size_t need);

 private:
  std::vector<RowGroup> groups_;
  const float* a_;
  int64_t lda_;
  const Matrix& w_;
  float* c_;
  int64_t ldc_;
  RowTiles tiles_;
  std::atomic<size_t> next_{0};
};

// Activations of `rows` tokens (all chunks of a call, concatenated).
struct Projected {
  int64_t rows = 0;
  Scratch<float> in;  // [rows, n_in]: c_q (normed) | kv (normed, roped) | C, Z | C_I, Z_I | head weights (scaled)
  Scratch<float> up;  // [rows, n_up]: q (normed, roped) | indexer q (roped)
};
// queries = false: only the x-side rows (out.up untouched), what a state needs.
void project(const PackedLayer& p, const float* x, int64_t rows, const int64_t* pos,
             const std::vector<RowGroup>& groups, Projected& out, bool queries = true);
// Its second half: out.up from the x-side rows out.in [rows, n_in] (given
// ready by Layer::forward_projected, which skips the first).
void project_queries(const PackedLayer& p, int64_t rows, const int64_t* pos, const std::vector<RowGroup>& groups,
                     Projected& out);
// Its per-row steps after the GEMM (out.up sized and filled): the queries'
// norms and RoPE (q), the indexer queries' RoPE (index). A decode step
// (schedule.cpp) projects the two row ranges apart, each beside other work.
void finish_queries(const PackedLayer& p, int64_t rows, const int64_t* pos, Projected& out, bool q, bool index);
// Its per-token steps that the backward recomputes (train/): c_q =
// RMSNorm_{q_a_norm}(raw) and q's heads, each RMSNorm'd (no weight) then
// rotated at the token's position. In place if raw == out; each returns or
// writes (inv, [H]) the 1/rms it normed by.
float norm_cq(const PackedLayer& p, const float* raw, float* cq);
void norm_rope_q(const PackedLayer& p, const float* raw, float* q, const RopeAngles& rope, float* inv = nullptr);

// Deployment numerics: the indexer queries of `rows` tokens in pr.up get the
// keys' rounding (Hadamard, then FP4, per head).
void round_index_queries(const PackedLayer& p, Projected& pr, int64_t rows);

// Feed n tokens' C/Z rows (row stride ld) into a compressor; emits the entries
// of windows that complete into its store (in the state's numerics). Returns
// how many were emitted. Entry e goes to row e - store_from of the store (a
// context-parallel block keeps only the entries it computes: src/layer/context.cpp).
int64_t compress_feed(const PackedLayer& p, const CompressorWeights& w, CompressorState& st, const float* c_rows,
                      const float* z_rows, int64_t ld, int64_t n, int64_t store_from = 0);

// The indexer keys as stored: fp32 rows, or (deployment) the packed FP4 rows,
// scored by the integer kernel of ops/fp4_dot.h without widening.
struct IndexKeys {
  const float* f32 = nullptr;
  const uint8_t* fp4 = nullptr;
  size_t row_bytes = 0;
  static IndexKeys of(const RowStore& s) {
    if (s.format() == RowStore::Format::key_fp4) return {nullptr, s.data(), s.row_bytes()};
    return {reinterpret_cast<const float*>(s.data()), nullptr, s.row_bytes()};
  }
};

// CSA indexer for `rows` queries: top-k eligible entries, best first, -1-padded to `width`.
// Adds the wall time split between scoring and selection to *score_s / *select_s.
void index_topk(const PackedLayer& p, const Projected& pr, int64_t row0, int64_t rows, const int64_t* pos,
                const IndexKeys& keys, int64_t n_keys, int64_t width, int32_t* topk, double* score_s, double* select_s);
// The best min(width, n) of scores[0, n), best first (higher score, then the
// lower index: docs/numerics.md, "Top-k ties"), -1-padded to out_width. Long
// rows are first cut to the entries at or above the k-th best of every 8th
// score (a lower bound of the k-th best of all, so no entry of the top k is
// cut); the result is that of a full stable sort. idx: scratch.
void select_topk(const float* scores, int64_t n, int64_t width, int64_t out_width, int32_t* out,
                 std::vector<int32_t>& idx);
// select_topk's result for one row, with the threads of a parallel region
// (long rows; omp_get_max_threads() parts, one per thread, merged in part
// order; short rows, a single thread, or a NaN score: select_topk itself).
void select_topk_split(const float* scores, int64_t n, int64_t width, int64_t out_width, int32_t* out,
                       std::vector<int32_t>& idx);
// Debug: raw scores of every (query, entry) pair, [rows, n_keys].
void index_scores_dense(const PackedLayer& p, const Projected& pr, int64_t row0, int64_t rows, const IndexKeys& keys,
                        int64_t n_keys, float* scores);

// The CSA gather (gather.cpp): the entries a query attends are the valid ids
// of its top-k row (-1 = empty slot) in ascending order (the key set is a set;
// index order reads memory forward). selected_ids writes them to ids [width]
// and returns how many; gather_selected also writes their rows as fp32 to
// rows [width, D].
int64_t selected_ids(const int32_t* topk_row, int64_t width, int32_t* ids);
int64_t gather_selected(const RowStore& entries, const int32_t* topk_row, int64_t width, int32_t* ids, float* rows);

// Keys one query attends to: a run of window rows and a run of compressed entries.
struct KeySet {
  const float* window = nullptr;  // first visible window row
  int64_t n_window = 0;
  const float* entries = nullptr;  // compressed entries [n_entries, D] (CSA: the gathered selection)
  int64_t n_entries = 0;
  const int32_t* ids = nullptr;  // CSA: the entries' ids (for the attention map); null: 0 .. n_entries-1
  // Or (HCA, flash-decoding): entries is null and each run decodes its own
  // entries from the store — nothing widens all of them every step.
  const RowStore* entry_rows = nullptr;
};
// Where one query's softmax mass goes (Layer::attention_map); head h writes
// mass[h·mass_stride + 0..2] = window, entries, sink and, if dense is set,
// the probability of each key at dense[h·dense_stride + column].
struct MassOut {
  float* mass = nullptr;
  int64_t mass_stride = 0;
  float* dense = nullptr;
  int64_t dense_stride = 0;
  int64_t window_col = 0;  // column of the first window key (its absolute position)
  int64_t entry_col = 0;   // column of compressed entry 0
};
// o[h_begin..h_end) of one query = softmax-with-sink attention over the key set.
void attend(const PackedLayer& p, const float* q, const KeySet& keys, int64_t h_begin, int64_t h_end, float* o,
            const MassOut* map = nullptr);

// Flash-decoding (attend_split.cpp; deployment numerics, short chunks): the
// keys (window first) in runs of kSplitKeys, the runs in groups of
// attend_group_runs(runs) = max(1, runs / kSplitGroups) (at least
// kSplitGroups groups once a query has that many runs, so 2-4 threads
// balance; one run per group below). attend_splits: the groups. attend_part:
// group `split`'s max logit m[H], Σ e^(l - m) l[H] and unnormalised output
// o[H, D], all heads, its runs merged online; attend_merge: heads
// [h_begin, h_end) of o [H, D] from the groups' parts ([splits, H, D],
// [splits, H] each), in group order, with the sink (attn_run::merge).
constexpr int64_t kSplitKeys = 64, kSplitGroups = 32;
int64_t attend_group_runs(int64_t runs);
int64_t attend_splits(const KeySet& keys);
void attend_part(const PackedLayer& p, const float* q, const KeySet& keys, int64_t split, float* o, float* m, float* l);
void attend_merge(const PackedLayer& p, int64_t splits, const float* parts, const float* m, const float* l,
                  int64_t h_begin, int64_t h_end, float* o);

// De-rotate o [rows, H*D] at its positions, then out = o_b(o_a_grouped(o)).
// `grouped` is scratch of rows·g·d_g floats.
void output_project(const PackedLayer& p, float* o, int64_t rows, const int64_t* pos,
                    const std::vector<RowGroup>& groups, float* grouped, float* out);

}  // namespace dsv4
