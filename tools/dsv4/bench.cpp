// dsv4 bench: one seeded-random layer at a preset's dimensions; prefill of S
// tokens or decode of N tokens after a prefill of C. Reports median seconds,
// tokens/s, achieved GFLOP/s of the sparse algorithm, peak RSS, per-stage times,
// and the machine's own sgemm GFLOP/s and copy bandwidth measured in the same run.
// With --backward: forward_train + backward of S tokens (training), timed apart.
#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "bench_model.h"
#include "bench_packed.h"
#include "commands.h"
#include "dsv4/layer.h"
#include "dsv4/random.h"
#include "progress.h"

namespace dsv4::cli {
namespace {

struct Options {
  std::string preset = "v4-flash", layer_type = "csa", weights = "f32", numerics = "reference";
  int64_t seq = 4096, context = 0, decode = 0, synthetic = 0;
  int threads = 0, repeats = 3;
  bool json = false, backward = false, packed = false, context_parallel = false;
  std::string layout = "zigzag";
  uint64_t seed = 1;
  PackedBenchOptions pack;  // --packed: its own options
};

double now() { return omp_get_wtime(); }

// Feeds n tokens of x (from row `from`) through the state in kPrefillChunk pieces.
void prefill(const Layer& layer, const Tensor& x, int64_t from, int64_t n, LayerState& st, StageTimes* times,
             Progress* progress) {
  const int64_t d = layer.config().hidden_size;
  for (int64_t s0 = 0; s0 < n; s0 += Layer::kPrefillChunk) {
    const int64_t len = std::min(Layer::kPrefillChunk, n - s0);
    Tensor piece({len, d},
                 std::vector<float>(x.data.begin() + (from + s0) * d, x.data.begin() + (from + s0 + len) * d));
    layer.forward(piece, st, nullptr, times);
    if (progress) progress->update(s0 + len);
  }
}

template <class T>
T median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

nlohmann::json stages_json(const StageTimes& t) {
  return {{"project", t.project}, {"compress", t.compress},   {"index_scores", t.index_scores},
          {"topk", t.topk},       {"attention", t.attention}, {"output", t.output}};
}

// --backward: Layer::forward (inference), Layer::forward_train then
// Layer::backward of one sequence of S tokens (loss = sum(y · dy), dy seeded),
// each timed; the medians, the backward's ratio to both forwards, the tape's
// bytes and the peak RSS (weights, tape and gradients included).
int run_backward_bench(const Options& o) {
  std::FILE* out = report_stream(o.json);
  if (o.decode > 0 || o.context > 0 || o.synthetic > 0)
    fail("bench --backward: one-shot only (give --seq S, not --context/--decode)");
  if (o.seq <= 0) fail("bench --backward: --seq must be > 0");
  if (parse_numerics(o.numerics) != Numerics::reference)
    fail("bench --backward: reference numerics only (deployment numerics round, which has no gradient)");
  const Config c = Config::preset(o.preset);
  const LayerType type = parse_layer_type(o.layer_type);
  std::fprintf(stderr, "building a random %s %s layer ...\n", o.preset.c_str(),
               std::string(layer_type_name(type)).c_str());
  LayerWeights weights = random_layer_weights(c, type, o.seed);
  store_as_released(weights, type);
  const Layer layer(c, type, std::move(weights), LayerOptions{parse_weight_format(o.weights), Numerics::reference});
  const Tensor x = random_uniform({o.seq, c.hidden_size}, 1.0f, o.seed + 99);
  const Tensor dy = random_uniform({o.seq, c.hidden_size}, 1.0f, o.seed + 100);

  std::vector<double> inf, fwd, bwd;  // inference forward, forward_train, backward
  size_t tape_bytes = 0;
  Tape tape;                                      // reused, as a training loop would:
  LayerGradients grads = layer.zero_gradients();  // later repeats touch no new pages
  for (int r = 0; r < o.repeats; ++r) {
    double t0 = now();
    layer.forward(x);
    inf.push_back(now() - t0);
    t0 = now();
    const Tensor y = layer.forward_train(x, tape);
    fwd.push_back(now() - t0);
    tape_bytes = tape.bytes();
    t0 = now();
    layer.backward(tape, dy, grads);
    bwd.push_back(now() - t0);
    std::fprintf(stderr, "  run %d/%d: forward %.3f s, forward_train %.3f s, backward %.3f s\n", r + 1, o.repeats,
                 inf.back(), fwd.back(), bwd.back());
  }
  const double fi = median(inf), f = median(fwd), b = median(bwd);
  const double weight_bytes = static_cast<double>(layer.weight_bytes());
  nlohmann::json j = {{"impl", "dsv4"},
                      {"preset", o.preset},
                      {"layer_type", o.layer_type},
                      {"mode", "backward"},
                      {"seq", o.seq},
                      {"threads", omp_get_max_threads()},
                      {"repeats", o.repeats},
                      {"forward_seconds", f},
                      {"backward_seconds", b},
                      {"backward_over_forward", b / f},
                      {"inference_forward_seconds", fi},
                      {"backward_over_inference_forward", b / fi},
                      {"seconds", f + b},
                      {"tokens_per_s", static_cast<double>(o.seq) / (f + b)},
                      {"peak_rss_bytes", peak_rss_bytes()},
                      {"tape_bytes", tape_bytes},
                      {"weight_bytes", weight_bytes},
                      {"weights", o.weights},
                      {"numerics", o.numerics}};
  std::fprintf(out, "dsv4 bench --backward: %s %s, S=%lld, %d threads\n", o.preset.c_str(),
               std::string(layer_type_name(type)).c_str(), static_cast<long long>(o.seq), omp_get_max_threads());
  std::fprintf(out,
               "  median forward_train %.4f s, backward %.4f s: backward = %.2fx forward_train, %.1f tokens/s (both)\n",
               f, b, b / f, static_cast<double>(o.seq) / (f + b));
  std::fprintf(out, "  median forward (inference, no tape) %.4f s: backward = %.2fx it\n", fi, b / fi);
  std::fprintf(out, "  peak RSS %.2f GB, weights %.2f GB, tape %.1f MB\n", peak_rss_bytes() / 1e9, weight_bytes / 1e9,
               tape_bytes / 1e6);
  if (o.json) std::printf("%s\n", j.dump().c_str());
  return 0;
}

int run_bench(const Options& o) {
  if (o.context_parallel)
    return bench_context_parallel(
        {o.preset, o.layer_type, o.weights, o.numerics, o.layout, o.seq, o.threads, o.repeats, o.seed, o.backward});
  if (o.threads > 0) omp_set_num_threads(o.threads);
  if (o.packed) {
    PackedBenchOptions p = o.pack;
    p.preset = o.preset, p.layer_type = o.layer_type, p.weights = o.weights;
    p.repeats = o.repeats, p.backward = o.backward, p.json = o.json, p.seed = o.seed;
    if (o.decode > 0 || o.context > 0) fail("bench --packed: one-shot documents (not with --context/--decode)");
    return run_packed_bench(p);
  }
  if (o.backward) return run_backward_bench(o);
  std::FILE* out = report_stream(o.json);
  const Config c = Config::preset(o.preset);
  const LayerType type = parse_layer_type(o.layer_type);
  const bool decode = o.decode > 0;
  if (o.synthetic > 0 && (!decode || o.context > 0))
    fail("bench: --synthetic-context C replaces --context C and needs --decode N");
  const int64_t total_tokens = decode ? o.context + o.decode : o.seq;  // rows of x: the synthetic context has none
  const int64_t context_len = o.context + o.synthetic;
  if (total_tokens <= 0) fail("bench: nothing to run (give --seq S or --context C --decode N)");

  const Roofline roof = measure_roofline();
  std::fprintf(stderr, "building a random %s %s layer ...\n", o.preset.c_str(),
               std::string(layer_type_name(type)).c_str());
  // The released dtypes (FP8 + UE8M0, BF16): native keeps them, f32/bf16 hold the same values widened.
  LayerWeights weights = random_layer_weights(c, type, o.seed);
  store_as_released(weights, type);
  const Layer layer(c, type, std::move(weights),
                    LayerOptions{parse_weight_format(o.weights), parse_numerics(o.numerics)});
  const Tensor x = random_uniform({total_tokens, c.hidden_size}, 1.0f, o.seed + 99);

  std::vector<double> secs;
  std::vector<StageTimes> stage_runs;
  size_t state_bytes = 0;
  double fastest = 1e300;      // decode: the fastest step of all runs (robust to a busy machine)
  double slowest = 0;          // and the slowest (a step that grows the state's arrays, a busy machine)
  double context_seconds = 0;  // decode mode: the prefill of the context (once; each run decodes from a copy)
  LayerState context = layer.new_state();
  if (decode && o.synthetic > 0) {
    const double t0 = now();
    context = random_state(c, type, o.synthetic, o.seed + 7, parse_numerics(o.numerics));
    context_seconds = now() - t0;
  } else if (decode) {
    Progress bar("context tokens", o.context);
    const double t0 = now();
    prefill(layer, x, 0, o.context, context, nullptr, &bar);
    context_seconds = now() - t0;
  }
  for (int r = 0; r < o.repeats; ++r) {
    LayerState st = decode ? context.clone() : layer.new_state();
    StageTimes times;
    if (!decode) {
      Progress bar("prefill tokens (run " + std::to_string(r + 1) + "/" + std::to_string(o.repeats) + ")", o.seq);
      const double t0 = now();
      prefill(layer, x, 0, o.seq, st, &times, &bar);
      secs.push_back(now() - t0);
      stage_runs.push_back(times);
    } else {
      std::vector<double> per_token;
      StageTimes sum;
      for (int64_t i = 0; i < o.decode; ++i) {
        Tensor tok({1, c.hidden_size}, std::vector<float>(x.data.begin() + (o.context + i) * c.hidden_size,
                                                          x.data.begin() + (o.context + i + 1) * c.hidden_size));
        const double t0 = now();
        layer.forward(tok, st, nullptr, &sum);
        per_token.push_back(now() - t0);
      }
      secs.push_back(median(per_token));
      fastest = std::min(fastest, *std::min_element(per_token.begin(), per_token.end()));
      slowest = std::max(slowest, *std::max_element(per_token.begin(), per_token.end()));
      for (double StageTimes::*f : {&StageTimes::project, &StageTimes::compress, &StageTimes::index_scores,
                                    &StageTimes::topk, &StageTimes::attention, &StageTimes::output})
        sum.*f /= static_cast<double>(o.decode);
      stage_runs.push_back(sum);
    }
    state_bytes = st.bytes();
  }
  // Before the second bandwidth probe (256 MiB) can raise it.
  const double peak_rss = static_cast<double>(peak_rss_bytes());
  // The memory's speed can change between the first probe and the steps: a second look.
  const double read_after = decode ? measure_read_bandwidth() : 0;
  const size_t mid =
      std::min_element(secs.begin(), secs.end(),
                       [&](double a, double b) { return std::fabs(a - median(secs)) < std::fabs(b - median(secs)); }) -
      secs.begin();
  const double seconds = secs[mid];
  const double flops = decode ? layer_flops(c, type, context_len, 1) : layer_flops(c, type, 0, o.seq);
  const double tokens = decode ? 1.0 : static_cast<double>(o.seq);
  const double weight_bytes = static_cast<double>(layer.weight_bytes());

  nlohmann::json j = {{"impl", "dsv4"},
                      {"preset", o.preset},
                      {"layer_type", o.layer_type},
                      {"mode", decode ? "decode" : "prefill"},
                      {"threads", omp_get_max_threads()},
                      {"repeats", o.repeats},
                      {"seconds", seconds},
                      {"tokens_per_s", tokens / seconds},
                      {"gflops", flops / seconds * 1e-9},
                      {"flops", flops},
                      {"peak_rss_bytes", peak_rss},
                      {"stages", stages_json(stage_runs[mid])},
                      {"sgemm_gflops", roof.sgemm_gflops},
                      {"copy_gb_per_s", roof.copy_gb_per_s},
                      {"read_gb_per_s", roof.read_gb_per_s},
                      {"gflops_vs_sgemm", flops / seconds * 1e-9 / roof.sgemm_gflops},
                      {"weight_bytes", weight_bytes},
                      {"weights", o.weights},
                      {"numerics", o.numerics},
                      {"state_bytes", state_bytes}};
  if (decode) {
    j["context"] = context_len, j["decode"] = o.decode, j["synthetic_context"] = o.synthetic > 0;
  } else {
    j["seq"] = o.seq;
  }
  if (decode) {
    const double bound = (weight_bytes + static_cast<double>(state_bytes)) / (roof.copy_gb_per_s * 1e9);
    j["bandwidth_bound_seconds"] = bound;
    j["seconds_vs_bandwidth_bound"] = seconds / bound;
    j["context_prefill_seconds"] = context_seconds;
    j["read_gb_per_s_after"] = read_after;
    j["fastest_step_seconds"] = fastest, j["slowest_step_seconds"] = slowest;
    const StepReads reads = step_reads(c, type, context_len, parse_numerics(o.numerics));
    const double read_s = (weight_bytes + reads.bytes) / (roof.copy_gb_per_s * 1e9);
    const ComputeBound cb = compute_bound(reads, roof, parse_numerics(o.numerics));
    j["step_read_bytes"] = weight_bytes + reads.bytes, j["indexer_macs"] = reads.macs;
    j["attention_macs"] = reads.attention_macs, j["indexer_macs_per_s"] = cb.indexer_rate;
    j["indexer_rate_of"] = cb.indexer_at, j["int8_macs_per_s"] = roof.int8_macs_per_s;
    j["read_bound_seconds"] = read_s, j["mac_bound_seconds"] = cb.seconds();
    j["seconds_vs_step_bound"] = seconds / std::max(read_s, cb.seconds());
  }
  std::fprintf(
      out, "dsv4 bench: %s %s, %s, %d threads, %s numerics\n", o.preset.c_str(),
      std::string(layer_type_name(type)).c_str(),
      decode
          ? ("decode after " + std::to_string(context_len) + (o.synthetic > 0 ? " synthetic" : "") + " tokens").c_str()
          : ("prefill S=" + std::to_string(o.seq)).c_str(),
      omp_get_max_threads(), o.numerics.c_str());
  std::fprintf(out, "  median %.4f s  (%s)  %.1f tokens/s  %.1f GFLOP/s = %.0f%% of sgemm %.1f GFLOP/s\n", seconds,
               decode ? "per token" : "whole prefill", tokens / seconds, flops / seconds * 1e-9,
               100 * flops / seconds * 1e-9 / roof.sgemm_gflops, roof.sgemm_gflops);
  std::fprintf(out, "  peak RSS %.2f GB, weights %.2f GB, state %.1f MB\n", peak_rss / 1e9, weight_bytes / 1e9,
               state_bytes / 1e6);
  if (decode)
    print_memory(out, roof, read_after);
  else
    std::fprintf(out, "  memory: copy %.1f GB/s, read %.1f GB/s\n", roof.copy_gb_per_s, roof.read_gb_per_s);
  if (decode)
    std::fprintf(out, "  fastest step %.4f s, slowest %.4f s (of %lld)\n", fastest, slowest,
                 static_cast<long long>(o.decode * o.repeats));
  if (decode)
    std::fprintf(out, "  context %s of %lld tokens took %.1f s\n", o.synthetic > 0 ? "synthesis" : "prefill",
                 static_cast<long long>(context_len), context_seconds);
  if (decode)
    std::fprintf(out, "  bandwidth bound %.4f s/token: measured = %.2fx of it\n",
                 j["bandwidth_bound_seconds"].get<double>(), j["seconds_vs_bandwidth_bound"].get<double>());
  if (decode)
    std::fprintf(out,
                 "  step bound: reads %.1f MB = %.4f s; multiply-adds: indexer %.0f M at %s %.0f G/s + attention "
                 "%.0f M at sgemm = %.4f s: measured = %.2fx the larger\n",
                 j["step_read_bytes"].get<double>() / 1e6, j["read_bound_seconds"].get<double>(),
                 j["indexer_macs"].get<double>() / 1e6, j["indexer_rate_of"].get<std::string>().c_str(),
                 j["indexer_macs_per_s"].get<double>() / 1e9, j["attention_macs"].get<double>() / 1e6,
                 j["mac_bound_seconds"].get<double>(), j["seconds_vs_step_bound"].get<double>());
  const StageTimes& st = stage_runs[mid];
  std::fprintf(out,
               "  stages: project %.3f  compress %.3f  index_scores %.3f  topk %.3f  attention %.3f  output %.3f s\n",
               st.project, st.compress, st.index_scores, st.topk, st.attention, st.output);
  if (o.json) std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace

void add_bench(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  auto* cmd =
      app.add_subcommand("bench", "Time one random layer at a preset's dimensions (prefill, decode or --backward)");
  cmd->add_option("--preset", o->preset, "v4-flash or v4-pro")->capture_default_str();
  cmd->add_option("--layer-type", o->layer_type, "swa, csa or hca")->capture_default_str();
  cmd->add_option("--seq", o->seq, "prefill: tokens S")->capture_default_str();
  cmd->add_option("--context", o->context, "decode: tokens prefilled first (C)");
  cmd->add_option("--synthetic-context", o->synthetic,
                  "decode: start from a seeded synthetic state of C tokens (random_state) instead of a prefill");
  cmd->add_option("--decode", o->decode, "decode: tokens decoded one at a time after the context (N)");
  cmd->add_option("-t,--threads", o->threads, "OpenMP threads (default: OMP_NUM_THREADS or all cores)");
  cmd->add_option("--repeats", o->repeats, "measured runs; the median is reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o->seed, "weights and input seed")->capture_default_str();
  cmd->add_option("--weights", o->weights,
                  "projection matrices in memory: f32, bf16, or native (the released FP8/BF16 dtypes as stored); "
                  "the random layer always has the released dtypes' values")
      ->capture_default_str();
  cmd->add_option("--numerics", o->numerics, "reference or deployment (docs/numerics.md)")
      ->check(CLI::IsMember({"reference", "deployment"}))
      ->capture_default_str();
  cmd->add_flag("--backward", o->backward,
                "training: time forward_train and backward of --seq tokens (loss = sum(y * dy)); reports both, "
                "backward/forward, the tape's bytes and peak RSS (reference numerics, one-shot only); with "
                "--context-parallel: per-rank times and the backward's bytes");
  cmd->add_flag("--packed", o->packed,
                "packed documents (docs/packing.md): --docs documents of log-uniform lengths in [--doc-min, "
                "--doc-max] in one call vs one by one (with --backward: the training step); --seq is ignored");
  cmd->add_option("--docs", o->pack.docs, "--packed: documents")->capture_default_str();
  cmd->add_option("--doc-min", o->pack.doc_min, "--packed: shortest document")->capture_default_str();
  cmd->add_option("--doc-max", o->pack.doc_max, "--packed: longest document")->capture_default_str();
  cmd->add_option("--only", o->pack.only, "--packed: run only this mode (profiling; no comparison)")
      ->check(CLI::IsMember({"packed", "separate"}));
  cmd->add_option("--narrow", o->pack.narrow,
                  "--packed: divide the preset's widths (d, H, D, r_q, d_g, H_I, D_I) by N; window, rates, top-k kept")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--json", o->json, "stdout: one JSON object (the report goes to stderr)");
  cmd->add_flag("--context-parallel", o->context_parallel,
                "under mpirun: prefill of --seq tokens split over the ranks; per-rank time, bytes sent/received, "
                "imbalance (docs/distributed.md)");
  cmd->add_option("--layout", o->layout, "--context-parallel: zigzag or contiguous blocks")
      ->check(CLI::IsMember({"zigzag", "contiguous"}))
      ->capture_default_str();
  cmd->callback([&rc, o] { rc = run_bench(*o); });
}

}  // namespace dsv4::cli
