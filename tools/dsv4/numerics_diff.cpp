// dsv4 numerics-diff: what deployment numerics change, on one seeded random
// layer at a preset's dimensions. For each context length C: both modes
// prefill the same C tokens through a state (the outputs are compared as they
// come), then decode N more tokens with debug output (their CSA top-k sets are
// compared). Reports the output difference relative to the output scale and
// the fraction of top-k entries that differ. docs/numerics.md has the numbers.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "commands.h"
#include "dsv4/conformance.h"
#include "dsv4/layer.h"
#include "dsv4/random.h"

namespace dsv4::cli {
namespace {

struct Options {
  std::string preset = "v4-flash", layer_type = "csa";
  std::vector<int64_t> contexts = {4096};
  int64_t decode = 16;
  int threads = 0;
  uint64_t seed = 1;
};

struct Diff {  // running output statistics
  double max_diff = 0, max_ref = 0, sq_diff = 0, sq_ref = 0;
  void add(const Tensor& ref, const Tensor& dep) {
    for (size_t i = 0; i < ref.data.size(); ++i) {
      const double r = ref.data[i], d = dep.data[i] - r;
      max_diff = std::max(max_diff, std::fabs(d)), max_ref = std::max(max_ref, std::fabs(r));
      sq_diff += d * d, sq_ref += r * r;
    }
  }
};

void compare(const Options& o, const Layer& ref, const Layer& dep, int64_t context) {
  const int64_t d = ref.config().hidden_size;
  const Tensor x = random_uniform({context + o.decode, d}, 1.0f, o.seed + 99);
  auto rows = [&](int64_t from, int64_t n) {
    return Tensor({n, d}, std::vector<float>(x.data.begin() + from * d, x.data.begin() + (from + n) * d));
  };
  LayerState sr = ref.new_state(), sd = dep.new_state();
  Diff prefill, decode;
  const double t0 = omp_get_wtime();
  for (int64_t s0 = 0; s0 < context; s0 += Layer::kPrefillChunk) {
    const Tensor piece = rows(s0, std::min(Layer::kPrefillChunk, context - s0));
    prefill.add(ref.forward(piece, sr), dep.forward(piece, sd));
  }
  int64_t picked = 0, differ = 0;
  for (int64_t i = 0; i < o.decode; ++i) {
    Intermediates a, b;
    const Tensor tok = rows(context + i, 1);
    decode.add(ref.forward(tok, sr, &a), dep.forward(tok, sd, &b));
    if (ref.type() != LayerType::csa) continue;
    const std::set<int64_t> ka = topk_set(a.topk, 0), kb = topk_set(b.topk, 0);
    picked += static_cast<int64_t>(ka.size());
    for (int64_t e : ka) differ += kb.count(e) == 0;
  }
  std::printf("%9lld  %9.2e  %9.2e  %9.2e  %9.2e  ", static_cast<long long>(context),
              std::sqrt(prefill.sq_diff / prefill.sq_ref), prefill.max_diff / prefill.max_ref,
              std::sqrt(decode.sq_diff / decode.sq_ref), decode.max_diff / decode.max_ref);
  if (picked)
    std::printf("%7.2f%% of %lld", 100.0 * differ / picked, static_cast<long long>(picked));
  else
    std::printf("%9s", "-");
  std::printf("   %6.1f s\n", omp_get_wtime() - t0);
  std::fflush(stdout);
}

void run(const Options& o) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const Config c = Config::preset(o.preset);
  const LayerType t = parse_layer_type(o.layer_type);
  const Layer ref(c, t, random_layer_weights(c, t, o.seed));
  const Layer dep(c, t, random_layer_weights(c, t, o.seed), LayerOptions{WeightFormat::f32, Numerics::deployment});
  std::printf("dsv4 numerics-diff: %s %s, seed %llu, %d threads; deployment vs reference numerics\n", o.preset.c_str(),
              std::string(layer_type_name(t)).c_str(), static_cast<unsigned long long>(o.seed), omp_get_max_threads());
  std::printf("%9s  %9s  %9s  %9s  %9s  %s\n", "context", "prefill", "(max)", "decode", "(max)",
              "decoded top-k entries that differ");
  std::printf("%9s  %9s  %9s  %9s  %9s\n", "", "rms rel", "max rel", "rms rel", "max rel");
  for (int64_t n : o.contexts) compare(o, ref, dep, n);
}

}  // namespace

void add_numerics_diff(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("numerics-diff",
                                 "Deployment vs reference numerics on a random layer: output difference relative to "
                                 "the output scale, and CSA top-k entries that differ");
  cmd->add_option("--preset", o->preset, "v4-flash or v4-pro")->capture_default_str();
  cmd->add_option("--layer-type", o->layer_type, "swa, csa or hca")->capture_default_str();
  cmd->add_option("--context", o->contexts, "context lengths (comma-separated)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--decode", o->decode, "tokens decoded after each context (their top-k are compared)")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}))
      ->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "OpenMP threads (default: all)");
  cmd->add_option("--seed", o->seed, "weights and input seed")->capture_default_str();
  cmd->callback([&rc, o] {
    run(*o);
    rc = 0;
  });
}

}  // namespace dsv4::cli
