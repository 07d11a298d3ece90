// dsv4 state-size: decode-state memory per layer type at a preset's
// dimensions, measured by feeding tokens through a real layer (constant
// weights: the state's size does not depend on their values), plus the
// marginal bytes per token and the whole-model total per sequence.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "dsv4/layer.h"
#include "progress.h"

namespace dsv4::cli {
namespace {

Tensor filled(Shape shape, float v) {
  const int64_t n = numel(shape);
  return Tensor(std::move(shape), std::vector<float>(static_cast<size_t>(n), v));
}

// Every tensor at its spec shape, filled with small constants (fast to build).
LayerWeights constant_weights(const Config& c, LayerType t) {
  LayerWeights w = empty_weights(t);
  for_each_weight(w, c, t, [](const WeightSpec& s, Tensor& x) {
    x = filled(s.shape, is_projection(s.role) ? 0.01f : s.role == WeightRole::norm ? 1.0f : 0.0f);
  });
  return w;
}

const char* const kNames[3] = {"sliding", "csa", "hca"};

struct Row {
  int64_t tokens;
  size_t held, tight;
  double seconds;  // feeding time so far
};

// Feeds tokens in chunks of 512 up to each count; a clone holds the state tightly.
std::vector<Row> measure(const Config& c, LayerType t, Numerics nm, const std::vector<int64_t>& counts, int& rc,
                         Progress& progress, int64_t done_before) {
  const Layer layer(c, t, constant_weights(c, t), LayerOptions{WeightFormat::f32, nm});
  LayerState st = layer.new_state();
  std::vector<Row> rows;
  const int64_t chunk = 512;
  const double t0 = omp_get_wtime();
  for (int64_t n : counts) {
    while (st.position() < n) {
      const int64_t len = std::min(chunk, n - st.position());
      layer.forward(filled({len, c.hidden_size}, 0.1f), st);
      progress.update(done_before + st.position());
    }
    rows.push_back({n, st.bytes(), st.clone().bytes(), omp_get_wtime() - t0});
    if (rows.back().tight != state_bytes(c, t, n, nm)) {  // the documented formula must match the code
      std::fprintf(stderr, "dsv4 state-size: %s at %lld tokens holds %zu bytes, formula says %zu\n",
                   std::string(layer_type_name(t)).c_str(), static_cast<long long>(n), rows.back().tight,
                   state_bytes(c, t, n, nm));
      rc = 1;
    }
  }
  return rows;
}

void report(const std::string& preset, Numerics nm, std::vector<int64_t> counts, bool json, int& rc) {
  std::FILE* out = report_stream(json);
  const Config c = Config::preset(preset);
  std::sort(counts.begin(), counts.end());
  counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
  std::fprintf(out, "%s, %s numerics: D=%lld W=%lld m=%lld m'=%lld D_I=%lld\n", preset.c_str(),
               std::string(numerics_name(nm)).c_str(), static_cast<long long>(c.head_dim),
               static_cast<long long>(c.sliding_window), static_cast<long long>(c.compress_rate_csa),
               static_cast<long long>(c.compress_rate_hca), static_cast<long long>(c.index_head_dim));
  std::fprintf(out, "%-8s %9s %14s %14s %8s\n", "type", "tokens", "bytes()", "tight", "feed s");
  const LayerType types[] = {LayerType::sliding, LayerType::csa, LayerType::hca};
  double fixed[3] = {}, per_token[3] = {};
  nlohmann::json j = {{"preset", preset}, {"numerics", std::string(numerics_name(nm))}, {"tokens", counts}};
  Progress progress("tokens fed (3 layer types)", 3 * counts.back());
  for (int i = 0; i < 3; ++i) {
    const std::vector<Row> rows = measure(c, types[i], nm, counts, rc, progress, i * counts.back());
    for (const Row& r : rows) {
      std::fprintf(out, "%-8s %9lld %14zu %14zu %8.1f\n", kNames[i], static_cast<long long>(r.tokens), r.held, r.tight,
                   r.seconds);
      j["measured"].push_back({{"type", kNames[i]},
                               {"tokens", r.tokens},
                               {"bytes", r.held},
                               {"tight_bytes", r.tight},
                               {"feed_seconds", r.seconds}});
    }
    // Marginal bytes per token between the first and last count (tight sizes).
    const Row &a = rows.front(), &b = rows.back();
    per_token[i] = b.tokens > a.tokens ? (static_cast<double>(b.tight) - a.tight) / (b.tokens - a.tokens) : 0;
    fixed[i] = static_cast<double>(a.tight) - per_token[i] * a.tokens;
    j["per_layer"][kNames[i]] = {{"fixed_bytes", fixed[i]}, {"bytes_per_token", per_token[i]}};
  }
  std::fprintf(out, "per layer (tight): bytes = fixed + per token x tokens\n");
  if (counts.back() - counts.front() < c.compress_rate_hca)  // HCA grows one entry per m' tokens
    std::fprintf(out, "  (measured over %lld tokens, fewer than m'; use counts further apart)\n",
                 static_cast<long long>(counts.back() - counts.front()));
  for (int i = 0; i < 3; ++i) std::fprintf(out, "  %-8s %10.0f + %7.2f per token\n", kNames[i], fixed[i], per_token[i]);
  int n[3] = {};
  for (LayerType t : c.layer_types) ++n[t == LayerType::sliding ? 0 : t == LayerType::csa ? 1 : 2];
  double model_fixed = 0, model_per_token = 0;
  for (int i = 0; i < 3; ++i) model_fixed += n[i] * fixed[i], model_per_token += n[i] * per_token[i];
  std::fprintf(out,
               "whole model (%d sliding + %d csa + %d hca layers), per sequence: %.1f MiB + %.1f KiB per token "
               "(%.1f MiB at 64K tokens, %.1f GiB at 1M)\n",
               n[0], n[1], n[2], model_fixed / (1 << 20), model_per_token / 1024,
               (model_fixed + model_per_token * 65536) / (1 << 20),
               (model_fixed + model_per_token * (1 << 20)) / (1 << 30));
  j["whole_model"] = {{"layers", {{"sliding", n[0]}, {"csa", n[1]}, {"hca", n[2]}}},
                      {"fixed_bytes", model_fixed},
                      {"bytes_per_token", model_per_token}};
  j["formula_matches"] = rc == 0;
  if (json) std::printf("%s\n", j.dump().c_str());
}

}  // namespace

void add_state_size(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand("state-size",
                                 "Decode-state bytes per layer type at a preset's dimensions, measured by feeding "
                                 "tokens through a layer (constant weights); marginal bytes per token");
  auto preset = std::make_shared<std::string>("v4-flash");
  auto tokens = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{256, 768});
  cmd->add_option("--preset", *preset, "config preset")
      ->check(CLI::IsMember({"v4-flash", "v4-pro"}))
      ->capture_default_str();
  cmd->add_option("--tokens", *tokens, "context lengths to measure at (comma-separated)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24))
      ->capture_default_str();
  auto numerics = std::make_shared<std::string>("reference");
  cmd->add_option("--numerics", *numerics,
                  "reference (fp32 rows) or deployment (584 B window rows and entries, 68 B indexer keys)")
      ->check(CLI::IsMember({"reference", "deployment"}))
      ->capture_default_str();
  auto json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json, "stdout: one JSON object (the report goes to stderr)");
  cmd->callback(
      [&rc, preset, tokens, numerics, json] { report(*preset, parse_numerics(*numerics), *tokens, *json, rc); });
}

}  // namespace dsv4::cli
