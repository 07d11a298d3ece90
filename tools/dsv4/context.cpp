// --context-parallel for verify and bench: one sequence over the ranks of
// MPI_COMM_WORLD (mpirun -np N dsv4 ...), docs/distributed.md. Rank 0 reports.
#include <omp.h>

#include <algorithm>
#include <cstdio>

#include "commands.h"
#include "dsv4/error.h"
#ifdef DSV4_MPI
#include "dsv4/context_parallel.h"
#include "dsv4/random.h"
#endif

namespace dsv4::cli {

#ifdef DSV4_MPI
namespace {

// MPI for the length of one sub-command.
struct MpiSession {
  MpiSession() {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  }
  ~MpiSession() { MPI_Finalize(); }
  int rank = 0, ranks = 1;
};

// One value per rank, on rank 0.
std::vector<double> on_root(double v) {
  int ranks = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  std::vector<double> all(static_cast<size_t>(ranks));
  MPI_Gather(&v, 1, MPI_DOUBLE, all.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return all;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// This rank's blocks of a sequence drawn per block (no rank holds the whole sequence).
std::vector<float> block_rows(const ContextBench& o, int64_t d, int rank, int ranks, ContextLayout lay, uint64_t salt) {
  std::vector<float> x;
  for (const TokenBlock& b : rank_blocks(o.seq, ranks, rank, lay)) {
    const Tensor xb = random_uniform({b.end - b.begin, d}, 1.0f, o.seed + salt + static_cast<uint64_t>(b.begin));
    x.insert(x.end(), xb.data.begin(), xb.data.end());
  }
  return x;
}

// --backward: context_parallel_forward_train, then context_parallel_backward.
int bench_backward(const ContextBench& o, const Layer& layer, const MpiSession& mpi, ContextLayout lay) {
  const int64_t d = layer.config().hidden_size;
  const std::vector<float> x = block_rows(o, d, mpi.rank, mpi.ranks, lay, 99);
  const std::vector<float> dy = block_rows(o, d, mpi.rank, mpi.ranks, lay, 7);
  const int64_t n = static_cast<int64_t>(x.size()) / d;
  std::vector<double> fwd, bwd;
  ContextStats fs, bs;
  size_t tape_bytes = 0;
  for (int r = 0; r < o.repeats; ++r) {
    ContextTape tape;
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    context_parallel_forward_train(layer, TensorView(x.data(), {n, d}), o.seq, MPI_COMM_WORLD, tape, {lay}, &fs);
    const double t1 = MPI_Wtime();
    context_parallel_backward(layer, tape, TensorView(dy.data(), {n, d}), MPI_COMM_WORLD, &bs);
    fwd.push_back(t1 - t0), bwd.push_back(MPI_Wtime() - t1);
    tape_bytes = tape.bytes();
  }
  const auto f = on_root(median(fwd)), b = on_root(median(bwd)), comp = on_root(bs.backward_s);
  const auto ex = on_root(bs.exchange_s), tape_mb = on_root(static_cast<double>(tape_bytes) / 1e6);
  const auto sent = on_root(static_cast<double>(bs.bytes_sent)), recv = on_root(static_cast<double>(bs.bytes_received));
  if (mpi.rank != 0) return 0;
  std::printf("dsv4 bench --context-parallel --backward: %s %s, S=%lld, %d ranks x %d threads, %s layout\n",
              o.preset.c_str(), o.layer_type.c_str(), static_cast<long long>(o.seq), mpi.ranks, omp_get_max_threads(),
              o.layout.c_str());
  std::printf("rank  fwd_train  backward  compute  exchange   MB sent  MB recv  tape MB   (backward's bytes)\n");
  for (int r = 0; r < mpi.ranks; ++r)
    std::printf("%4d %10.3f %9.3f %8.3f %9.3f %9.2f %8.2f %8.1f\n", r, f[r], b[r], comp[r], ex[r], sent[r] / 1e6,
                recv[r] / 1e6, tape_mb[r]);
  const double slowest = *std::max_element(b.begin(), b.end()), slowest_f = *std::max_element(f.begin(), f.end());
  std::printf("imbalance (max/mean rank time): backward %.3f, forward_train %.3f\n", slowest / mean(b),
              slowest_f / mean(f));
  std::printf("throughput: %.1f tokens/s (forward_train + backward, S / slowest rank, median of %d)\n",
              static_cast<double>(o.seq) / (slowest + slowest_f), o.repeats);
  const double most =
      std::max(*std::max_element(sent.begin(), sent.end()), *std::max_element(recv.begin(), recv.end()));
  std::printf("backward's exchange at a 10 GB/s link: %.4f s per rank (%.2f%% of the slowest rank's backward)\n",
              most / 1e10, 100.0 * most / 1e10 / slowest);
  return 0;
}

}  // namespace

int verify_context_parallel(const std::vector<std::string>& files, const std::string& layout, bool verbose) {
  MpiSession mpi;
  const ContextLayout lay = context_layout(layout);
  int passed = 0, failed = 0;
  for (const std::string& f : files) {
    const CaseReport r = verify_case_context_parallel(f, MPI_COMM_WORLD, lay);
    (r.passed ? passed : failed)++;
    if (mpi.rank != 0) continue;
    std::printf("%-4s %-48s max_abs %.3e  max_rel %.3e  (%lld values, %d ranks, %s)\n", r.passed ? "ok" : "FAIL",
                r.name.c_str(), r.max_abs, r.max_rel, static_cast<long long>(r.compared), mpi.ranks, layout.c_str());
    const size_t shown = verbose ? r.failures.size() : std::min<size_t>(r.failures.size(), 3);
    for (size_t i = 0; i < shown; ++i) std::printf("     %s\n", r.failures[i].c_str());
  }
  if (mpi.rank == 0) std::printf("%d passed, %d failed\n", passed, failed);
  return failed;
}

int bench_context_parallel(const ContextBench& o) {
  MpiSession mpi;
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const Config c = Config::preset(o.preset);
  const LayerType type = parse_layer_type(o.layer_type);
  const ContextLayout lay = context_layout(o.layout);
  if (o.seq <= 0) fail("bench --context-parallel: --seq must be > 0");
  LayerWeights weights = random_layer_weights(c, type, o.seed);
  store_as_released(weights, type);
  const Layer layer(c, type, std::move(weights),
                    LayerOptions{parse_weight_format(o.weights), parse_numerics(o.numerics)});
  if (o.backward) return bench_backward(o, layer, mpi, lay);
  const std::vector<float> x = block_rows(o, c.hidden_size, mpi.rank, mpi.ranks, lay, 99);
  const int64_t n = static_cast<int64_t>(x.size()) / c.hidden_size;
  std::vector<double> secs;
  ContextStats st;
  for (int r = 0; r < o.repeats; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    context_parallel_forward(layer, TensorView(x.data(), {n, c.hidden_size}), o.seq, MPI_COMM_WORLD, {lay}, nullptr,
                             &st);
    secs.push_back(MPI_Wtime() - t0);
  }
  std::sort(secs.begin(), secs.end());
  const double t = secs[secs.size() / 2];
  const auto time = on_root(t), prep = on_root(st.prepare_s), ex = on_root(st.exchange_s), fw = on_root(st.forward_s);
  const auto sent = on_root(static_cast<double>(st.bytes_sent)), recv = on_root(static_cast<double>(st.bytes_received));
  const auto tokens = on_root(static_cast<double>(n));
  if (mpi.rank != 0) return 0;
  std::printf("dsv4 bench --context-parallel: %s %s, S=%lld, %d ranks x %d threads, %s layout, %s numerics\n",
              o.preset.c_str(), o.layer_type.c_str(), static_cast<long long>(o.seq), mpi.ranks, omp_get_max_threads(),
              o.layout.c_str(), o.numerics.c_str());
  std::printf("rank  tokens   seconds  prepare  exchange  forward   MB sent  MB recv\n");
  for (int r = 0; r < mpi.ranks; ++r)
    std::printf("%4d %7.0f %9.3f %8.3f %9.3f %8.3f %9.2f %8.2f\n", r, tokens[r], time[r], prep[r], ex[r], fw[r],
                sent[r] / 1e6, recv[r] / 1e6);
  const double slowest = *std::max_element(time.begin(), time.end());
  std::printf("imbalance (max/mean rank time): %.3f  (forward only: %.3f)\n", slowest / mean(time),
              *std::max_element(fw.begin(), fw.end()) / mean(fw));
  std::printf("throughput: %.1f tokens/s (S / slowest rank, median of %d)\n", static_cast<double>(o.seq) / slowest,
              o.repeats);
  const double most =
      std::max(*std::max_element(sent.begin(), sent.end()), *std::max_element(recv.begin(), recv.end()));
  std::printf("exchange at a 10 GB/s link: %.4f s per rank (%.2f%% of the slowest rank's time)\n", most / 1e10,
              100.0 * most / 1e10 / slowest);
  return 0;
}

#else
int verify_context_parallel(const std::vector<std::string>&, const std::string&, bool) {
  fail("--context-parallel: this dsv4 was built without MPI (DSV4_MPI=OFF: install libopenmpi-dev and rebuild)");
}
int bench_context_parallel(const ContextBench&) {
  fail("--context-parallel: this dsv4 was built without MPI (DSV4_MPI=OFF: install libopenmpi-dev and rebuild)");
}
#endif

}  // namespace dsv4::cli
