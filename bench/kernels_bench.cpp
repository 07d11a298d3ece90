// Kernel micro-benchmarks at V4-Flash shapes, plus the machine's roofline
// (OpenBLAS sgemm GFLOP/s at a large square size, STREAM-like copy bandwidth)
// measured in the same binary. Run: build/bench/dsv4_kernels_bench
#include <benchmark/benchmark.h>
#include <omp.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include <cstring>
#include <random>
#include <vector>

#include "dsv4/random.h"
#include "dsv4/state.h"
#include "ops/attend_run.h"
#include "ops/blas.h"
#include "ops/fp4_dot.h"
#include "ops/quant.h"
#include "ops/stream.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

const Config& flash() {
  static const Config c = Config::preset("v4-flash");
  return c;
}

// C[M,N] = A[M,K] B[N,K]^T with dsv4's tiled sgemm; counters in FLOP/s.
void gemm(benchmark::State& st, int64_t m, int64_t n, int64_t k) {
  const Tensor a = random_uniform({m, k}, 1, 1), b = random_uniform({n, k}, 1, 2);
  std::vector<float> c(static_cast<size_t>(m * n));
  for (auto _ : st) {
    gemm_nt(m, n, k, a.ptr(), k, b.ptr(), k, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  st.counters["FLOP/s"] = benchmark::Counter(2.0 * m * n * k * st.iterations(), benchmark::Counter::kIsRate);
}

void BM_Roofline_Sgemm2048(benchmark::State& st) { gemm(st, 2048, 2048, 2048); }
void BM_Roofline_Copy256MiB(benchmark::State& st) {
  const size_t bytes = size_t{256} << 20, chunks = 64;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  for (auto _ : st) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < chunks; ++i) std::memcpy(&dst[i * bytes / chunks], &src[i * bytes / chunks], bytes / chunks);
    benchmark::DoNotOptimize(dst.data());
  }
  st.counters["bytes/s"] = benchmark::Counter(2.0 * bytes * st.iterations(), benchmark::Counter::kIsRate);
}

// Read-only bandwidth: 256 MiB summed by all threads (what streaming weights
// can reach; the copy above also writes).
void BM_Roofline_Read256MiB(benchmark::State& st) {
  const size_t words = (size_t{256} << 20) / 8, chunks = 64;
  std::vector<uint64_t> src(words, 1);
  for (auto _ : st) {
    uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(^ : total)
    for (size_t i = 0; i < chunks; ++i) total ^= xor_stream(&src[i * words / chunks], words / chunks);
    benchmark::DoNotOptimize(total);
  }
  st.counters["bytes/s"] = benchmark::Counter(8.0 * words * st.iterations(), benchmark::Counter::kIsRate);
}

// The integer instruction peaks of one core (fp4dot::maddubs_peak, dpbusd_peak:
// what the benchmarks' step bounds price the deployment indexer at); counters in
// multiply-adds/s.
void peak(benchmark::State& st, double (*loop)(int64_t), const char* missing) {
  constexpr int64_t kIter = 1 << 20;
  double macs = 0;
  for (auto _ : st) macs += loop(kIter);
  if (macs == 0) return st.SkipWithError(missing);
  st.counters["MAC/s"] = benchmark::Counter(macs, benchmark::Counter::kIsRate);
}
void BM_Roofline_Maddubs(benchmark::State& st) { peak(st, fp4dot::maddubs_peak, "needs AVX2"); }
void BM_Roofline_Dpbusd(benchmark::State& st) { peak(st, fp4dot::dpbusd_peak, "no AVX-512 VNNI on this CPU"); }

// The FP4 indexer kernel (deployment numerics) on one thread: 64 heads x 128
// dims against range(0) packed keys (16,384: in L2; 262,144: a 1M-token layer,
// streamed); range(1): 0 the kernel scores() picks, 1 the AVX2 one.
void BM_Fp4IndexerScores(benchmark::State& st) {
  const int64_t n = st.range(0), heads = 64, dim = 128;
  const size_t rb = quant::index_row_bytes(dim);
  std::mt19937 rng(5);
  std::normal_distribution<float> v(0.0f, 1.0f);
  std::vector<float> row(dim), q(heads * dim), a(heads), s(n);
  std::vector<uint8_t> keys(n * rb);
  for (int64_t w = 0; w < n; ++w) {
    for (float& e : row) e = v(rng);
    quant::index_row_encode(row.data(), dim, &keys[w * rb]);
  }
  for (float& e : q) e = v(rng);
  for (float& e : a) e = v(rng);
  for (int64_t h = 0; h < heads; ++h) quant::fp4_qdq(&q[h * dim], dim);
  fp4dot::Query enc;
  fp4dot::encode_query(q.data(), heads, dim, enc);
  const bool avx2 = st.range(1) == 1;
  for (auto _ : st) {
    if (avx2) {
      if (!fp4dot::scores_avx2(enc, a.data(), keys.data(), rb, n, s.data())) return st.SkipWithError("no AVX2");
    } else {
      fp4dot::scores(enc, a.data(), keys.data(), rb, n, s.data());
    }
    benchmark::DoNotOptimize(s.data());
  }
  st.SetLabel(avx2 ? "AVX2, one thread" : fp4dot::avx512_vnni() ? "AVX-512 VNNI, one thread" : "one thread");
  st.counters["MAC/s"] = benchmark::Counter(double(n) * heads * dim * st.iterations(), benchmark::Counter::kIsRate);
}

// The layer's GEMMs for S = 512 tokens (x-side fused CSA projection, c_q-side, grouped o_a block, o_b).
void BM_Gemm_XSideFused(benchmark::State& st) { gemm(st, 512, 1024 + 512 + 4096 + 512 + 64, 4096); }
void BM_Gemm_QUp(benchmark::State& st) { gemm(st, 512, 64 * 512 + 64 * 128, 1024); }
void BM_Gemm_OaGroup(benchmark::State& st) { gemm(st, 512, 1024, 4096); }
void BM_Gemm_Ob(benchmark::State& st) { gemm(st, 512, 4096, 8192); }
// Decode: one token through the row-invariant kernel (what the layer uses for short chunks).
// Decode of B = range(1) sequences through o_b [4096, 8192] held as f32 / bf16 / FP8
// (range(0) = 0, 1, 2): the row-invariant kernel over stored weights; bytes/s of weights.
void BM_Gemv_Decode_Ob_Stored(benchmark::State& st) {
  const int64_t n = 4096, k = 8192, m = st.range(1);
  const Tensor a = random_uniform({m, k}, 1, 1), w = random_uniform({n, k}, 0.02f, 2);
  const StoredMatrix sm = st.range(0) == 2 ? quantize_fp8_blocks(w, true) : quantize_bf16(w);
  Matrix mat;
  st.range(0) == 0 ? mat.append(w) : mat.append(sm);
  std::vector<float> c(static_cast<size_t>(m * n));
  const RowGroup g{0, m, true};
  for (auto _ : st) {
    linear(g, n, a.ptr(), k, mat, 0, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  st.counters["bytes/s"] = benchmark::Counter(double(mat.bytes()) * st.iterations(), benchmark::Counter::kIsRate);
}

// One decode token (m = 1) through FP8 rows of range(2) columns (4,096: the
// x-side projections' and o_a's width; 8,192: o_b's; 1,024: q_b's), range(0)
// rows, range(1) threads: 128 rows of 4,096 (512 KiB, in L2, one thread) is
// the kernel's compute ceiling; 128 MiB (beyond L3) its rate from DRAM, to
// compare with Read256MiB.
void BM_Gemv_Decode_Fp8(benchmark::State& st) {
  const int64_t n = st.range(0), k = st.range(2);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(static_cast<int>(st.range(1)));
  const Tensor a = random_uniform({1, k}, 1, 1), w = random_uniform({n, k}, 0.02f, 2);
  Matrix mat;
  mat.append(quantize_fp8_blocks(w, true));
  std::vector<float> c(static_cast<size_t>(n));
  const RowGroup g{0, 1, true};
  for (auto _ : st) {
    linear(g, n, a.ptr(), k, mat, 0, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  omp_set_num_threads(threads);
  st.counters["bytes/s"] = benchmark::Counter(double(mat.bytes()) * st.iterations(), benchmark::Counter::kIsRate);
}

void BM_Gemv_Decode_QUp(benchmark::State& st) {
  const int64_t n = 64 * 512 + 64 * 128, k = 1024;
  const Tensor a = random_uniform({1, k}, 1, 1), b = random_uniform({n, k}, 1, 2);
  std::vector<float> c(static_cast<size_t>(n));
  for (auto _ : st) {
    gemm_nt_rows(1, n, k, a.ptr(), k, b.ptr(), k, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  st.counters["bytes/s"] = benchmark::Counter(4.0 * n * k * st.iterations(), benchmark::Counter::kIsRate);
}

// A packed CSA layer at Flash dims (weights random, loaded once).
const PackedLayer& packed_csa() {
  static const LayerWeights w = random_layer_weights(flash(), LayerType::csa, 3);
  static const PackedLayer p = pack_layer(flash(), LayerType::csa, w);
  return p;
}

// One query, all 64 heads, W = 128 window keys + k = 512 gathered entries.
void BM_SparseAttention_OneQuery(benchmark::State& st) {
  const PackedLayer& p = packed_csa();
  const int64_t hd = 512, h = 64, t_entries = 4096;
  const Tensor q = random_uniform({h, hd}, 1, 4), win = random_uniform({128, hd}, 1, 5),
               ent = random_uniform({t_entries, hd}, 1, 6);
  RowStore store(RowStore::Format::f32, hd, 64);
  store.resize(t_entries);
  for (int64_t i = 0; i < t_entries; ++i) store.put(i, const_cast<float*>(ent.ptr()) + i * hd);
  std::vector<int32_t> sel(512), ids(512);
  for (int i = 0; i < 512; ++i) sel[i] = i * 7 % t_entries;
  std::vector<float> o(h * hd), rows(512 * hd);
  // The layer runs this kernel inside its per-query parallel loop: one thread per query.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  for (auto _ : st) {  // the CSA gather, then the attention
    const int64_t n = gather_selected(store, sel.data(), 512, ids.data(), rows.data());
    const KeySet ks{win.ptr(), 128, rows.data(), n, ids.data()};
    attend(p, q.ptr(), ks, 0, h, o.data());
    benchmark::DoNotOptimize(o.data());
  }
  omp_set_num_threads(threads);
  st.SetLabel("one thread");
  st.counters["FLOP/s"] = benchmark::Counter(4.0 * h * hd * 640 * st.iterations(), benchmark::Counter::kIsRate);
}

// One flash-decoding run (ops/attend_run.h): 64 heads x 64 fp32 rows x 512
// dims, kernel range(0) (0 scalar, 1 AVX2, 2 AVX-512; skipped where this CPU
// lacks it), one thread: logits, softmax and P·V, 4·H·n·D FLOP.
void BM_AttendRun(benchmark::State& st) {
  const auto kernel = static_cast<attn_run::Kernel>(st.range(0));
  if (!attn_run::available(kernel)) return st.SkipWithError("kernel not available here");
  const int64_t h = 64, hd = 512, n = kSplitKeys;
  const Tensor q = random_uniform({h, hd}, 1, 7), keys = random_uniform({n, hd}, 1, 8);
  std::vector<const float*> rows;
  for (int64_t k = 0; k < n; ++k) rows.push_back(keys.ptr() + k * hd);
  std::vector<float> qt(attn_run::query_floats(h, hd));
  attn_run::transpose_query(q.ptr(), h, hd, qt.data());
  attn_run::Run r;
  r.qt = qt.data(), r.heads = h, r.dim = hd, r.rows = rows.data(), r.n = n, r.scale = 0.04f;
  std::vector<float> scratch(attn_run::scratch_floats(r)), o(h * hd), m(h), l(h);
  attn_run::start(h, hd, o.data(), m.data(), l.data());
  for (auto _ : st) {  // each pass continues the state (α = 1 after the first)
    attn_run::attend(kernel, r, scratch.data(), o.data(), m.data(), l.data());
    benchmark::DoNotOptimize(o.data());
  }
  st.counters["FLOP/s"] = benchmark::Counter(4.0 * h * hd * n * st.iterations(), benchmark::Counter::kIsRate);
}

// One HCA query at context 1M in deployment numerics, on one thread: 128
// window rows + 8,192 FP8 entries, every group of runs through attend_part
// (each run widens its entries, then the fused kernel); the layer spreads these groups over the threads.
void BM_AttendPart_Hca1M(benchmark::State& st) {
  const PackedLayer& p = packed_csa();
  const int64_t hd = 512, h = 64, nw = 128, ne = 8192;
  const Tensor q = random_uniform({h, hd}, 1, 9), win = random_uniform({nw, hd}, 1, 10),
               ent = random_uniform({ne, hd}, 1, 11);
  RowStore store(RowStore::Format::kv_fp8, hd, 64);
  store.resize(ne);
  for (int64_t i = 0; i < ne; ++i) store.put(i, const_cast<float*>(ent.ptr()) + i * hd);
  KeySet ks{win.ptr(), nw, nullptr, ne};
  ks.entry_rows = &store;
  const int64_t splits = attend_splits(ks);
  std::vector<float> o(splits * h * hd), m(splits * h), l(splits * h);
  for (auto _ : st) {
    for (int64_t s = 0; s < splits; ++s) attend_part(p, q.ptr(), ks, s, &o[s * h * hd], &m[s * h], &l[s * h]);
    benchmark::DoNotOptimize(o.data());
  }
  st.SetLabel("one thread");
  st.counters["FLOP/s"] = benchmark::Counter(4.0 * h * hd * (nw + ne) * st.iterations(), benchmark::Counter::kIsRate);
}

// Indexer scores + top-k for 64 queries at position ~4·T over T = range(0) entries.
void BM_IndexerTopk(benchmark::State& st) {
  const PackedLayer& p = packed_csa();
  const int64_t n_t = st.range(0), rows = 64;
  Projected pr;
  pr.rows = rows;
  const Tensor in = random_uniform({rows, p.n_in}, 1, 7), up = random_uniform({rows, p.n_up}, 1, 8);
  std::copy(in.data.begin(), in.data.end(), pr.in.get(in.data.size()));
  std::copy(up.data.begin(), up.data.end(), pr.up.get(up.data.size()));
  const Tensor keys = random_uniform({n_t, 128}, 1, 9);
  std::vector<int64_t> pos(rows);
  for (int64_t i = 0; i < rows; ++i) pos[i] = 4 * n_t - rows + i;
  std::vector<int32_t> topk(rows * 512);
  double score_s = 0, select_s = 0;
  for (auto _ : st) {
    index_topk(p, pr, 0, rows, pos.data(), IndexKeys{keys.ptr()}, n_t, 512, topk.data(), &score_s, &select_s);
    benchmark::DoNotOptimize(topk.data());
  }
  st.counters["FLOP/s"] =
      benchmark::Counter(2.0 * 64 * 128 * n_t * rows * st.iterations(), benchmark::Counter::kIsRate);
  st.counters["select_share"] = select_s / (score_s + select_s);
}

// CSA compressor pooling: 4096 tokens' C/Z rows (2D channels) into 1024 entries.
void BM_CompressorPooling(benchmark::State& st) {
  const PackedLayer& p = packed_csa();
  const int64_t n = 4096, in_w = 1024;
  const Tensor cz = random_uniform({n, 2 * in_w}, 1, 10);
  for (auto _ : st) {
    CompressorState cs = LayerState(flash(), LayerType::csa).compressor();
    compress_feed(p, *p.w->compressor, cs, cz.ptr(), cz.ptr() + in_w, 2 * in_w, n);
    benchmark::DoNotOptimize(cs.entries.data());
  }
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(n) * st.iterations(), benchmark::Counter::kIsRate);
}

// Deployment numerics: what one decode step at context 65,536 adds on one
// thread: decoding 16,384 indexer keys, 512 selected entries and 127 window
// rows from the encoded state, and encoding the new kv row.
void BM_Deployment_DecodeStepRows(benchmark::State& st) {
  const int64_t keys = 16384, picked = 512, window = 127, d = 512, r = 64, di = 128;
  const size_t kb = quant::kv_row_bytes(d, r), ib = quant::index_row_bytes(di);
  const Tensor x = random_uniform({keys, d}, 1, 3);
  std::vector<uint8_t> kv(picked * kb), ix(keys * ib), row(kb);
  std::vector<float> tmp(static_cast<size_t>(di)), out(static_cast<size_t>(keys * di));
  for (int64_t i = 0; i < keys; ++i) {
    std::copy_n(x.ptr() + i * d, di, tmp.data());
    quant::hadamard(tmp.data(), di);
    quant::index_row_encode(tmp.data(), di, &ix[i * ib]);
    if (i < picked) quant::kv_row_encode(x.ptr() + i * d, d, r, &kv[i * kb]);
  }
  for (auto _ : st) {
    for (int64_t i = 0; i < keys; ++i) quant::index_row_decode(&ix[i * ib], di, &out[i * di]);
    for (int64_t i = 0; i < picked + window; ++i) quant::kv_row_decode(&kv[(i % picked) * kb], d, r, &out[i * d]);
    quant::kv_row_encode(x.ptr(), d, r, row.data());
    benchmark::DoNotOptimize(out.data());
  }
}

// One append to a clone of a 1M-token CSA layer's entry store (262,144 rows;
// a clone holds exactly its rows, so the append grows it by 1/8): 0 = FP8 kv
// rows (deployment), 1 = fp32 (reference). The clone is untimed.
void BM_RowStore_GrowAfterClone(benchmark::State& st) {
  RowStore base(st.range(0) == 0 ? RowStore::Format::kv_fp8 : RowStore::Format::f32, 512, 64);
  base.assign(262144);
  for (auto _ : st) {
    st.PauseTiming();
    RowStore c = base;
    st.ResumeTiming();
    c.resize(c.rows() + 1);
    benchmark::DoNotOptimize(c.data());
    st.PauseTiming();
    c = RowStore();  // freed outside the timing
    st.ResumeTiming();
  }
}

BENCHMARK(BM_Roofline_Sgemm2048)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Roofline_Copy256MiB)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Roofline_Read256MiB)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Roofline_Maddubs)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Roofline_Dpbusd)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Fp4IndexerScores)->ArgsProduct({{16384, 262144}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gemm_XSideFused)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gemm_QUp)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gemm_OaGroup)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gemm_Ob)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gemv_Decode_Ob_Stored)->ArgsProduct({{0, 1, 2}, {1, 16}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gemv_Decode_Fp8)
    ->Args({128, 1, 4096})
    ->Args({32768, 1, 4096})
    ->Args({32768, 2, 4096})
    ->Args({16384, 2, 8192})
    ->Args({131072, 2, 1024})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Gemv_Decode_QUp)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SparseAttention_OneQuery)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_AttendRun)->DenseRange(0, 2)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_AttendPart_Hca1M)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_IndexerTopk)->Arg(1024)->Arg(16384)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CompressorPooling)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Deployment_DecodeStepRows)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RowStore_GrowAfterClone)->DenseRange(0, 1)->Unit(benchmark::kMillisecond)->Iterations(5);

}  // namespace
}  // namespace dsv4

BENCHMARK_MAIN();
