// dsv4 bench --packed: a training pipeline's packed buffer — --docs documents
// of seeded log-uniform lengths in [--doc-min, --doc-max] back to back — through
// one random layer in one call (Layer::forward(x, cu_seqlens); with --backward
// forward_train + backward, the training step), against the same documents one
// by one. Reports both medians, their ratio, peak RSS, and whether the two agree
// bit for bit (outputs; with --backward dx and every weight's gradient).
#include "bench_packed.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <utility>

#include "bench_model.h"
#include "commands.h"
#include "dsv4/random.h"

namespace dsv4::cli {
namespace {

// V4's widths divided by n (d, H, D down to its RoPE part, r_q, d_g, H_I, D_I);
// the window, the compress rates and top-k stay: the documents' structure is V4's.
Config narrowed(Config c, int64_t n) {
  if (n <= 1) return c;
  c.hidden_size /= n, c.num_attention_heads /= n, c.q_lora_rank /= n, c.o_lora_rank /= n;
  c.head_dim = std::max(c.qk_rope_head_dim, c.head_dim / n);
  c.o_groups = std::max<int64_t>(1, c.o_groups / n);
  c.index_n_heads = std::max<int64_t>(1, c.index_n_heads / n);
  c.index_head_dim = std::max(c.qk_rope_head_dim, c.index_head_dim / n);
  c.validate();
  return c;
}

std::vector<int64_t> document_lengths(const PackedBenchOptions& o) {
  if (o.docs < 1 || o.doc_min < 1 || o.doc_max < o.doc_min)
    fail("bench --packed: need --docs >= 1 and 1 <= --doc-min <= --doc-max");
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> u(std::log(static_cast<double>(o.doc_min)),
                                           std::log(static_cast<double>(o.doc_max)));
  std::vector<int64_t> cu{0};
  for (int64_t i = 0; i < o.docs; ++i)
    cu.push_back(cu.back() + std::clamp<int64_t>(std::llround(std::exp(u(rng))), o.doc_min, o.doc_max));
  return cu;
}

// This process's minor page faults (fresh memory: ~2 µs a 4 KiB page on this VM)
// and CPU seconds so far: with one thread the CPU time of a step is its wall
// time less the time other processes took the core.
std::pair<long, double> faults_cpu() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  const auto sec = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
  };
  return {u.ru_minflt, sec(u.ru_utime) + sec(u.ru_stime)};
}

template <class T>
T median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

bool same(const Tensor& a, const Tensor& b) {
  return a.shape == b.shape && std::memcmp(a.ptr(), b.ptr(), a.data.size() * sizeof(float)) == 0;
}

bool same_weights(const Layer& l, const LayerGradients& a, const LayerGradients& b) {
  bool ok = true;
  for (const WeightSpec& s : weight_specs(l.config(), l.type()))
    ok = ok && same(weight(a.weights, s.id), weight(b.weights, s.id));
  return ok;
}

// One measured step: packed (one call) or the documents one by one. Outputs
// into y, dx into dx, the weights' gradients into g (zeroed by the caller).
// Returns the seconds of the forward (forward_train) and of the backward.
std::pair<double, double> step(const Layer& l, const Tensor& x, const Tensor& dy, const std::vector<int64_t>& cu,
                               bool packed, bool backward, Tensor& y, Tensor& dx, LayerGradients& g, Tape& tape) {
  const int64_t d = l.config().hidden_size;
  double fwd = 0, bwd = 0;
  const auto timed = [](double& acc, auto&& f) {
    const double t0 = omp_get_wtime();
    f();
    acc += omp_get_wtime() - t0;
  };
  if (packed) {
    timed(fwd, [&] { y = backward ? l.forward_train(x, cu, tape) : l.forward(x, cu); });
    if (backward) timed(bwd, [&] { l.backward(tape, dy, g), std::swap(dx, g.dx); });
  } else {
    for (size_t i = 0; i + 1 < cu.size(); ++i) {
      const TensorView xi(x.ptr() + cu[i] * d, {cu[i + 1] - cu[i], d});
      timed(fwd, [&] {
        const Tensor yi = backward ? l.forward_train(xi, tape) : l.forward(xi);
        std::memcpy(y.ptr() + cu[i] * d, yi.ptr(), yi.data.size() * sizeof(float));
      });
      if (!backward) continue;
      timed(bwd, [&] {
        l.backward(tape, TensorView(dy.ptr() + cu[i] * d, {cu[i + 1] - cu[i], d}), g);
        std::memcpy(dx.ptr() + cu[i] * d, g.dx.ptr(), g.dx.data.size() * sizeof(float));
      });
    }
  }
  return {fwd, bwd};
}

}  // namespace

int run_packed_bench(const PackedBenchOptions& o) {
  std::FILE* out = report_stream(o.json);
  const Config c = narrowed(Config::preset(o.preset), o.narrow);
  const LayerType type = parse_layer_type(o.layer_type);
  const std::vector<int64_t> cu = document_lengths(o);
  const int64_t t_all = cu.back(), d = c.hidden_size;
  std::fprintf(stderr, "building a random %s%s %s layer ...\n", o.preset.c_str(),
               o.narrow > 1 ? ("/" + std::to_string(o.narrow)).c_str() : "",
               std::string(layer_type_name(type)).c_str());
  LayerWeights weights = random_layer_weights(c, type, o.seed);
  store_as_released(weights, type);
  const Layer layer(c, type, std::move(weights), LayerOptions{parse_weight_format(o.weights), Numerics::reference});
  const Tensor x = random_uniform({t_all, d}, 1.0f, o.seed + 99), dy = random_uniform({t_all, d}, 1.0f, o.seed + 100);

  std::vector<double> secs[2], fwd[2], bwd[2];  // [0] one by one, [1] packed
  Tensor y[2] = {Tensor({t_all, d}), Tensor({t_all, d})}, dx[2] = {Tensor({t_all, d}), Tensor({t_all, d})};
  LayerGradients g[2];
  Tape tape[2];  // each mode keeps its own, as a training loop reuses its tape from step to step
  // A warm-up of each first (unmeasured: fresh pages and tapes cost ~4 ms per MB
  // on a VM), then alternating, so drift in the machine's load hits both alike.
  // --only packed|separate runs one mode alone (profiling; no comparison).
  for (int r = -1; r < o.repeats; ++r)
    for (int packed : {0, 1}) {
      if ((o.only == "packed" && !packed) || (o.only == "separate" && packed)) continue;
      g[packed] = layer.zero_gradients();
      const auto [faults0, cpu0] = faults_cpu();
      const auto [f, b] = step(layer, x, dy, cu, packed, o.backward, y[packed], dx[packed], g[packed], tape[packed]);
      const auto [faults1, cpu1] = faults_cpu();
      if (r < 0) continue;
      secs[packed].push_back(f + b), fwd[packed].push_back(f), bwd[packed].push_back(b);
      std::fprintf(stderr, "  run %d/%d %s: %.3f s", r + 1, o.repeats, packed ? "packed" : "one by one", f + b);
      if (o.backward) std::fprintf(stderr, " (forward_train %.3f + backward %.3f)", f, b);
      std::fprintf(stderr, ", %ld page faults, CPU %.3f s\n", faults1 - faults0, cpu1 - cpu0);
    }
  if (!o.only.empty()) return 0;
  bool identical = same(y[0], y[1]);
  if (o.backward) identical = identical && same(dx[0], dx[1]) && same_weights(layer, g[0], g[1]);
  const double s1 = median(secs[0]), sp = median(secs[1]);
  std::vector<int64_t> len;
  for (size_t i = 0; i + 1 < cu.size(); ++i) len.push_back(cu[i + 1] - cu[i]);
  std::sort(len.begin(), len.end());
  const char* what = o.backward ? "training step (forward_train + backward)" : "forward";
  std::fprintf(
      out, "dsv4 bench --packed: %s%s %s, %s, %lld documents (%lld..%lld tokens, median %lld), T = %lld, %d threads\n",
      o.preset.c_str(), o.narrow > 1 ? ("/" + std::to_string(o.narrow)).c_str() : "",
      std::string(layer_type_name(type)).c_str(), what, static_cast<long long>(o.docs),
      static_cast<long long>(len.front()), static_cast<long long>(len.back()),
      static_cast<long long>(len[len.size() / 2]), static_cast<long long>(t_all), omp_get_max_threads());
  std::fprintf(out, "  median packed %.3f s, one by one %.3f s: packed/one-by-one = %.3f; %.0f tokens/s packed\n", sp,
               s1, sp / s1, static_cast<double>(t_all) / sp);
  if (o.backward)
    std::fprintf(
        out, "  medians forward_train: packed %.3f s, one by one %.3f s; backward: packed %.3f s, one by one %.3f s\n",
        median(fwd[1]), median(fwd[0]), median(bwd[1]), median(bwd[0]));
  std::fprintf(out, "  bit-identical (outputs%s): %s; peak RSS %.2f GB\n", o.backward ? ", dx, weights' gradients" : "",
               identical ? "yes" : "NO", peak_rss_bytes() / 1e9);
  nlohmann::json j = {{"impl", "dsv4"},
                      {"preset", o.preset},
                      {"narrow", o.narrow},
                      {"layer_type", o.layer_type},
                      {"mode", o.backward ? "packed_backward" : "packed"},
                      {"documents", o.docs},
                      {"lengths", len},
                      {"tokens", t_all},
                      {"threads", omp_get_max_threads()},
                      {"repeats", o.repeats},
                      {"packed_seconds", sp},
                      {"one_by_one_seconds", s1},
                      {"packed_over_one_by_one", sp / s1},
                      {"packed_seconds_runs", secs[1]},
                      {"one_by_one_seconds_runs", secs[0]},
                      {"packed_backward_seconds", o.backward ? median(bwd[1]) : 0.0},
                      {"one_by_one_backward_seconds", o.backward ? median(bwd[0]) : 0.0},
                      {"identical", identical},
                      {"peak_rss_bytes", peak_rss_bytes()}};
  if (o.json) std::printf("%s\n", j.dump().c_str());
  return identical ? 0 : 1;
}

}  // namespace dsv4::cli
