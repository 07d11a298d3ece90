// dsv4 bench-batch: a serving step of B sequences decoding one token each
// (forward_batch), for several B, at one context length.
// dsv4 bench-stack: every attention layer of a preset (V4-Flash: 43) in memory
// with the released dtypes, decoding through all of them.
// Decode time depends on the sizes of the weights and states, not on their
// values: contexts are prefilled (or, --synthetic-context, synthesised:
// random_state) once per layer type and the state copied.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "bench_model.h"
#include "commands.h"
#include "dsv4/layer.h"
#include "dsv4/random.h"

namespace dsv4::cli {
namespace {

struct ServeOptions {
  std::string preset = "v4-flash", layer_type = "csa", weights = "native", numerics = "reference";
  int64_t context = 8192, steps = 8, layers = 0, synthetic = 0;
  std::vector<int64_t> batches = {1, 2, 4, 8, 16, 32, 64};
  int threads = 0;
  uint64_t seed = 1;
  bool json = false;
};

Layer released_layer(const Config& c, LayerType t, uint64_t seed, const ServeOptions& o) {
  LayerWeights w = random_layer_weights(c, t, seed);
  store_as_released(w, t);
  return Layer(c, t, std::move(w), LayerOptions{parse_weight_format(o.weights), parse_numerics(o.numerics)});
}

// A state after `context` random tokens, prefilled in kPrefillChunk pieces,
// or (synthetic) random_state.
LayerState prefilled(const Layer& layer, int64_t context, uint64_t seed, bool synthetic) {
  if (synthetic) return random_state(layer.config(), layer.type(), context, seed, layer.numerics());
  LayerState st = layer.new_state();
  const int64_t d = layer.config().hidden_size;
  for (int64_t s0 = 0; s0 < context; s0 += Layer::kPrefillChunk) {
    const int64_t n = std::min(Layer::kPrefillChunk, context - s0);
    layer.forward(random_uniform({n, d}, 1.0f, seed + static_cast<uint64_t>(s0)), st);
  }
  return st;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int run_batch(const ServeOptions& o) {
  std::FILE* out = report_stream(o.json);
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const Config c = Config::preset(o.preset);
  const LayerType type = parse_layer_type(o.layer_type);
  const Roofline roof = measure_roofline();
  const Layer layer = released_layer(c, type, o.seed, o);
  const int64_t ctx = o.synthetic > 0 ? o.synthetic : o.context;
  std::fprintf(stderr, "%s %lld tokens ...\n", o.synthetic > 0 ? "synthesising" : "prefilling",
               static_cast<long long>(ctx));
  const LayerState base = prefilled(layer, ctx, o.seed + 7, o.synthetic > 0);
  nlohmann::json rows = nlohmann::json::array();
  std::fprintf(out, "dsv4 bench-batch: %s %s, weights %s (%.2f GB), context %lld, %d threads, copy %.1f GB/s\n",
               o.preset.c_str(), std::string(layer_type_name(type)).c_str(), o.weights.c_str(),
               layer.weight_bytes() / 1e9, static_cast<long long>(ctx), omp_get_max_threads(), roof.copy_gb_per_s);
  std::fprintf(out, "  %6s %12s %12s %10s %14s   %s\n", "B", "ms/step", "ms/token", "vs B=1", "bound ms/step",
               "stages ms: project compress index topk attention output");
  double one = 0;
  for (int64_t b : o.batches) {
    std::vector<LayerState> states(static_cast<size_t>(b), base);
    std::vector<LayerState*> ptrs;
    for (LayerState& s : states) ptrs.push_back(&s);
    std::vector<double> secs;
    std::vector<StageTimes> stages;
    for (int64_t step = 0; step < o.steps; ++step) {
      std::vector<Tensor> toks;
      for (int64_t i = 0; i < b; ++i)
        toks.push_back(random_uniform({1, c.hidden_size}, 1.0f, o.seed + 1000 * step + i));
      std::vector<const Tensor*> xs;
      for (const Tensor& t : toks) xs.push_back(&t);
      stages.emplace_back();
      const double t0 = omp_get_wtime();
      layer.forward_batch(xs, ptrs, nullptr, &stages.back());
      secs.push_back(omp_get_wtime() - t0);
    }
    const double s = median(secs);
    const StageTimes& st = stages[size_t(std::find(secs.begin(), secs.end(), s) - secs.begin())];
    if (b == o.batches.front()) one = s;
    const double bound = (static_cast<double>(layer.weight_bytes()) + static_cast<double>(b) * base.bytes()) /
                         (roof.copy_gb_per_s * 1e9);
    std::fprintf(out, "  %6lld %12.2f %12.3f %10.2f %14.2f   %.1f %.1f %.1f %.1f %.1f %.1f\n",
                 static_cast<long long>(b), s * 1e3, s * 1e3 / b, s / one, bound * 1e3, st.project * 1e3,
                 st.compress * 1e3, st.index_scores * 1e3, st.topk * 1e3, st.attention * 1e3, st.output * 1e3);
    rows.push_back({{"batch", b}, {"seconds_per_step", s}, {"vs_first", s / one}, {"bandwidth_bound_seconds", bound}});
  }
  if (o.json)
    std::printf("%s\n", nlohmann::json{{"preset", o.preset},
                                       {"layer_type", o.layer_type},
                                       {"weights", o.weights},
                                       {"context", ctx},
                                       {"threads", omp_get_max_threads()},
                                       {"weight_bytes", layer.weight_bytes()},
                                       {"state_bytes", base.bytes()},
                                       {"copy_gb_per_s", roof.copy_gb_per_s},
                                       {"rows", rows}}
                            .dump()
                            .c_str());
  return 0;
}

int run_stack(const ServeOptions& o) {
  std::FILE* out = report_stream(o.json);
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const Config c = Config::preset(o.preset);
  const int64_t n = o.layers > 0 ? std::min<int64_t>(o.layers, int64_t(c.layer_types.size()))
                                 : static_cast<int64_t>(c.layer_types.size());
  const Roofline roof = measure_roofline();
  std::vector<Layer> layers;
  size_t weight_bytes = 0;
  for (int64_t i = 0; i < n; ++i) {
    std::fprintf(stderr, "\rbuilding layer %lld/%lld", static_cast<long long>(i + 1), static_cast<long long>(n));
    layers.push_back(released_layer(c, c.layer_types[size_t(i)], o.seed + 101 * uint64_t(i), o));
    weight_bytes += layers.back().weight_bytes();
  }
  std::fprintf(stderr, "\n");
  // One prefill (or synthesis) per layer type; every layer of that type starts from a copy.
  const bool synthetic = o.synthetic > 0;
  const int64_t ctx = synthetic ? o.synthetic : o.context;
  std::vector<LayerState> states;
  std::vector<std::pair<LayerType, LayerState>> per_type;
  for (int64_t i = 0; i < n; ++i) {
    const LayerType t = c.layer_types[size_t(i)];
    auto it = std::find_if(per_type.begin(), per_type.end(), [&](const auto& p) { return p.first == t; });
    if (it == per_type.end()) {
      std::fprintf(stderr, "%s %lld tokens for a %s layer ...\n", synthetic ? "synthesising" : "prefilling",
                   static_cast<long long>(ctx), std::string(layer_type_name(t)).c_str());
      per_type.emplace_back(t, prefilled(layers[size_t(i)], ctx, o.seed + 7, synthetic));
      it = per_type.end() - 1;
    }
    states.push_back(it->second);
  }
  per_type.clear();  // the copies are the states
  std::vector<double> secs;
  std::vector<std::vector<double>> layer_secs(static_cast<size_t>(n));  // each layer's time in each step
  for (int64_t step = 0; step < o.steps; ++step) {
    const Tensor tok = random_uniform({1, c.hidden_size}, 1.0f, o.seed + 500 + uint64_t(step));
    const double t0 = omp_get_wtime();
    double t = t0;
    for (int64_t i = 0; i < n; ++i) {  // the attention layers only
      layers[size_t(i)].forward(tok, states[size_t(i)]);
      const double now = omp_get_wtime();
      layer_secs[size_t(i)].push_back(now - t);
      t = now;
    }
    secs.push_back(t - t0);
  }
  const double peak_rss = static_cast<double>(peak_rss_bytes());  // before the probe below adds 256 MiB
  const double read_after = measure_read_bandwidth();             // the memory's speed can change during a run
  const auto [fastest, slowest] = std::minmax_element(secs.begin(), secs.end());
  // The sum of its layers: the first layer of each type decoding alone (median), once per layer of that type.
  double alone = 0;
  std::vector<std::pair<LayerType, double>> alone_of;
  for (int64_t i = 0; i < n; ++i) {
    const LayerType t = c.layer_types[size_t(i)];
    auto it = std::find_if(alone_of.begin(), alone_of.end(), [&](const auto& p) { return p.first == t; });
    if (it == alone_of.end()) {
      std::vector<double> one;
      for (int64_t step = 0; step < o.steps; ++step) {
        const Tensor tok = random_uniform({1, c.hidden_size}, 1.0f, o.seed + 900 + uint64_t(step));
        const double t0 = omp_get_wtime();
        layers[size_t(i)].forward(tok, states[size_t(i)]);
        one.push_back(omp_get_wtime() - t0);
      }
      alone_of.emplace_back(t, median(one));
      it = alone_of.end() - 1;
    }
    alone += it->second;
  }
  // Per layer type: a layer's median step inside the stack (averaged over the
  // layers of that type) against the first one's alone: where the stack loses.
  nlohmann::json by_type = nlohmann::json::array();
  std::string per_type_line;
  for (const auto& [t, alone_s] : alone_of) {
    double in_stack = 0;
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i)
      if (c.layer_types[size_t(i)] == t) in_stack += median(layer_secs[size_t(i)]), ++count;
    in_stack /= double(count);
    by_type.push_back({{"layer_type", layer_type_name(t)},
                       {"layers", count},
                       {"stack_seconds", in_stack},
                       {"alone_seconds", alone_s}});
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s%s %.2f / %.2f ms (%lld)", per_type_line.empty() ? "" : ", ",
                  std::string(layer_type_name(t)).c_str(), in_stack * 1e3, alone_s * 1e3,
                  static_cast<long long>(count));
    per_type_line += buf;
  }
  size_t state_bytes = 0, state_64k = 0;
  StepReads all;
  for (int64_t i = 0; i < n; ++i) {
    const LayerType t = c.layer_types[size_t(i)];
    state_bytes += states[size_t(i)].bytes();
    state_64k += dsv4::state_bytes(c, t, 65536, parse_numerics(o.numerics));
    const StepReads r = step_reads(c, t, ctx, parse_numerics(o.numerics));
    all.bytes += r.bytes, all.macs += r.macs, all.attention_macs += r.attention_macs;
  }
  const double s = median(secs), bound = double(weight_bytes + state_bytes) / (roof.copy_gb_per_s * 1e9);
  const double read_bytes = all.bytes, read_s = (double(weight_bytes) + read_bytes) / (roof.copy_gb_per_s * 1e9);
  const ComputeBound cb = compute_bound(all, roof, parse_numerics(o.numerics));
  const double mac_s = cb.seconds(), step_bound = std::max(read_s, mac_s);
  std::fprintf(out,
               "dsv4 bench-stack: %s, %lld of %zu attention layers, weights %s, %s numerics, %scontext %lld, %d "
               "threads\n",
               o.preset.c_str(), static_cast<long long>(n), c.layer_types.size(), o.weights.c_str(), o.numerics.c_str(),
               synthetic ? "synthetic " : "", static_cast<long long>(ctx), omp_get_max_threads());
  std::fprintf(out, "  weights %.2f GB, states %.3f GB (at 65,536 tokens: %.3f GB), peak RSS %.2f GB\n",
               weight_bytes / 1e9, state_bytes / 1e9, state_64k / 1e9, peak_rss / 1e9);
  print_memory(out, roof, read_after);
  std::fprintf(out,
               "  decode %.1f ms/token through the stack (median of %lld; %.2f tokens/s); bandwidth bound (weights + "
               "whole states) %.1f ms at %.1f GB/s: %.2fx\n",
               s * 1e3, static_cast<long long>(o.steps), 1 / s, bound * 1e3, roof.copy_gb_per_s, s / bound);
  std::fprintf(out,
               "  step bound: reads (weights + window + indexer keys + selected/HCA entries) %.2f GB = %.1f ms; "
               "multiply-adds: indexer %.2f G at %s %.0f G/s = %.1f ms + attention %.2f G at sgemm %.0f GFLOP/s = "
               "%.1f ms: %.2fx the larger\n",
               (double(weight_bytes) + read_bytes) / 1e9, read_s * 1e3, all.macs / 1e9, cb.indexer_at,
               cb.indexer_rate / 1e9, cb.indexer_s * 1e3, all.attention_macs / 1e9, roof.sgemm_gflops,
               cb.attention_s * 1e3, s / step_bound);
  std::fprintf(out, "  fastest step %.1f ms (%.2f tokens/s), slowest %.1f ms\n", *fastest * 1e3, 1 / *fastest,
               *slowest * 1e3);
  std::fprintf(out, "  sum of its layers decoding alone %.1f ms: stack / sum = %.2f\n", alone * 1e3, s / alone);
  std::fprintf(out, "  per layer, median in the stack / alone: %s\n", per_type_line.c_str());
  if (n < int64_t(c.layer_types.size()))
    std::fprintf(out, "  all %zu layers, scaled by layer count: weights %.2f GB, %.0f ms/token\n", c.layer_types.size(),
                 weight_bytes / 1e9 * double(c.layer_types.size()) / double(n),
                 s * 1e3 * double(c.layer_types.size()) / double(n));
  if (o.json)
    std::printf("%s\n", nlohmann::json{{"preset", o.preset},
                                       {"layers", n},
                                       {"weights", o.weights},
                                       {"context", ctx},
                                       {"threads", omp_get_max_threads()},
                                       {"weight_bytes", weight_bytes},
                                       {"state_bytes", state_bytes},
                                       {"state_bytes_64k", state_64k},
                                       {"numerics", o.numerics},
                                       {"synthetic_context", synthetic},
                                       {"seconds_per_token", s},
                                       {"bandwidth_bound_seconds", bound},
                                       {"step_read_bytes", double(weight_bytes) + read_bytes},
                                       {"indexer_macs", all.macs},
                                       {"attention_macs", all.attention_macs},
                                       {"indexer_macs_per_s", cb.indexer_rate},
                                       {"indexer_rate_of", cb.indexer_at},
                                       {"sgemm_gflops", roof.sgemm_gflops},
                                       {"read_bound_seconds", read_s},
                                       {"mac_bound_seconds", mac_s},
                                       {"sum_of_layers_seconds", alone},
                                       {"per_type", by_type},
                                       {"fastest_step_seconds", *fastest},
                                       {"slowest_step_seconds", *slowest},
                                       {"step_seconds", secs},
                                       {"copy_gb_per_s", roof.copy_gb_per_s},
                                       {"read_gb_per_s", roof.read_gb_per_s},
                                       {"read_gb_per_s_after", read_after},
                                       {"peak_rss_bytes", peak_rss}}
                            .dump()
                            .c_str());
  return 0;
}

void common(CLI::App* cmd, ServeOptions* o) {
  cmd->add_option("--preset", o->preset, "v4-flash or v4-pro")->capture_default_str();
  cmd->add_option("--context", o->context, "tokens in each sequence's state before the measured steps")
      ->capture_default_str();
  cmd->add_option("--steps", o->steps, "measured decode steps (median reported)")->capture_default_str();
  cmd->add_option("--weights", o->weights, "f32, bf16 or native (the released FP8/BF16 dtypes)")->capture_default_str();
  cmd->add_option("--numerics", o->numerics, "reference or deployment (docs/numerics.md)")
      ->check(CLI::IsMember({"reference", "deployment"}))
      ->capture_default_str();
  cmd->add_option("--synthetic-context", o->synthetic,
                  "start from seeded synthetic states of C tokens (random_state) instead of prefilling --context");
  cmd->add_option("-t,--threads", o->threads, "OpenMP threads (default: OMP_NUM_THREADS or all cores)");
  cmd->add_option("--seed", o->seed, "weights and input seed")->capture_default_str();
  cmd->add_flag("--json", o->json, "stdout: one JSON object (the report goes to stderr)");
}

}  // namespace

void add_bench_serve(CLI::App& app, int& rc) {
  auto o = std::make_shared<ServeOptions>();
  auto* batch = app.add_subcommand("bench-batch", "Time serving steps of B sequences decoding one token each");
  common(batch, o.get());
  batch->add_option("--layer-type", o->layer_type, "swa, csa or hca")->capture_default_str();
  batch->add_option("--batches", o->batches, "batch sizes B")->capture_default_str();
  batch->callback([&rc, o] { rc = run_batch(*o); });
  auto* stack = app.add_subcommand("bench-stack", "Decode through every attention layer of a preset, all in memory");
  common(stack, o.get());
  stack->add_option("--layers", o->layers, "only the first N layers (0: all)")->capture_default_str();
  stack->callback([&rc, o] { rc = run_stack(*o); });
}

}  // namespace dsv4::cli
