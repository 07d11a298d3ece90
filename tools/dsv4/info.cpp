// dsv4 info MODEL_DIR: per layer its type and attention tensors (dtype,
// shape, bytes, shard), problems that would stop it from loading, byte totals.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "dsv4/model.h"

namespace dsv4::cli {
namespace {

std::string human(uint64_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f MiB", double(b) / (1024.0 * 1024.0));
  return s;
}

// One layer's report; returns whether it loads.
bool layer_info(const Model& m, int64_t i, std::FILE* out, nlohmann::json& j, uint64_t& total) {
  std::fprintf(out, "\nlayer %lld  %s\n", static_cast<long long>(i),
               std::string(layer_type_name(m.layer_type(i))).c_str());
  j = {{"index", i}, {"type", std::string(layer_type_name(m.layer_type(i)))}, {"tensors", nlohmann::json::array()}};
  uint64_t bytes = 0;
  for (const TensorSummary& t : m.layer_tensors(i)) {
    std::fprintf(out, "  %-8s %-14s %12llu  %-34s %s\n", std::string(dtype_name(t.dtype)).c_str(),
                 shape_str(t.shape).c_str(), static_cast<unsigned long long>(t.bytes), t.shard.c_str(), t.name.c_str());
    j["tensors"].push_back({{"name", t.name},
                            {"dtype", std::string(dtype_name(t.dtype))},
                            {"shape", t.shape},
                            {"bytes", t.bytes},
                            {"shard", t.shard}});
    bytes += t.bytes;
  }
  std::fprintf(out, "  attention bytes: %llu (%s)\n", static_cast<unsigned long long>(bytes), human(bytes).c_str());
  j["attention_bytes"] = bytes;
  const std::vector<std::string> problems = m.layer_problems(i);
  if (problems.empty()) {
    std::fprintf(out, "  in memory:");
    for (WeightFormat f : {WeightFormat::native, WeightFormat::bf16, WeightFormat::f32}) {
      const std::string name(weight_format_name(f));
      std::fprintf(out, "  %s %s", name.c_str(), human(m.layer_bytes(i, f)).c_str());
      j["bytes_in_memory"][name] = m.layer_bytes(i, f);
    }
    std::fprintf(out, "\n");
  }
  for (const std::string& p : problems) std::fprintf(out, "  problem: %s\n", p.c_str());
  j["problems"] = problems;
  total += bytes;
  return problems.empty();
}

// Returns the number of layers with problems.
int info(const std::string& dir, int64_t only, bool json) {
  const Model m = Model::open(dir);
  if (only >= 0) (void)m.layer_type(only);  // out of range: refused as `dsv4 run` refuses it
  std::FILE* out = report_stream(json);
  const Config& c = m.config();
  std::fprintf(out, "model   %s\n", dir.c_str());
  std::fprintf(out, "naming  %s\n", std::string(naming_scheme_name(m.scheme())).c_str());
  std::fprintf(out, "shards  %zu\n", m.num_shards());
  std::fprintf(out, "layers  %lld\n", static_cast<long long>(m.num_layers()));
  std::fprintf(out,
               "dims    d=%lld H=%lld D=%lld R=%lld q_lora=%lld g=%lld d_g=%lld W=%lld m=%lld m'=%lld "
               "H_I=%lld D_I=%lld k=%lld\n",
               (long long)c.hidden_size, (long long)c.num_attention_heads, (long long)c.head_dim,
               (long long)c.qk_rope_head_dim, (long long)c.q_lora_rank, (long long)c.o_groups, (long long)c.o_lora_rank,
               (long long)c.sliding_window, (long long)c.compress_rate_csa, (long long)c.compress_rate_hca,
               (long long)c.index_n_heads, (long long)c.index_head_dim, (long long)c.index_topk);
  std::string others;
  for (const auto& [dtype, n] : m.other_tensors()) others += " " + dtype + " x" + std::to_string(n);
  std::fprintf(out, "others  %s\n",
               others.empty() ? " none" : (others + "  (other modules: skipped, not read)").c_str());
  nlohmann::json j = {{"model", dir},
                      {"naming", std::string(naming_scheme_name(m.scheme()))},
                      {"shards", m.num_shards()},
                      {"num_layers", m.num_layers()},
                      {"dims", nlohmann::json::parse(config_to_json_text(c))},
                      {"other_tensors", m.other_tensors()},
                      {"layers", nlohmann::json::array()}};
  uint64_t total = 0;
  int bad_layers = 0;
  for (int64_t i = 0; i < m.num_layers(); ++i) {
    if (only >= 0 && i != only) continue;
    nlohmann::json lj;
    bad_layers += !layer_info(m, i, out, lj, total);
    j["layers"].push_back(std::move(lj));
  }
  std::fprintf(out, "\ntotal attention bytes: %llu (%s)\n", static_cast<unsigned long long>(total),
               human(total).c_str());
  if (bad_layers) std::fprintf(out, "%d layer(s) cannot be loaded\n", bad_layers);
  j["total_attention_bytes"] = total;
  j["layers_with_problems"] = bad_layers;
  if (json) std::printf("%s\n", j.dump().c_str());
  return bad_layers;
}

}  // namespace

void add_info(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand("info",
                                 "List a model folder's attention layers: type, naming scheme, tensors "
                                 "(dtype, shape, bytes, shard) and byte totals");
  auto dir = std::make_shared<std::string>();
  auto layer = std::make_shared<int64_t>(-1);
  auto json = std::make_shared<bool>(false);
  cmd->add_option("model_dir", *dir, "folder with config.json and model.safetensors[.index.json]")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--layer", *layer, "only this layer")->check(layer_index());
  cmd->add_flag("--json", *json, "stdout: one JSON object (the report goes to stderr)");
  cmd->callback([&rc, dir, layer, json] { rc = info(*dir, *layer, *json) == 0 ? 0 : 1; });
}

}  // namespace dsv4::cli
