// dsv4 info MODEL_DIR: per layer its type and attention tensors (dtype,
// shape, bytes, shard), problems that would stop it from loading, byte totals.
#include <cstdio>

#include "commands.h"
#include "dsv4/model.h"

namespace dsv4::cli {
namespace {

std::string human(uint64_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f MiB", double(b) / (1024.0 * 1024.0));
  return s;
}

// Returns the number of layers with problems.
int info(const std::string& dir, int64_t only) {
  const Model m = Model::open(dir);
  const Config& c = m.config();
  std::printf("model   %s\n", dir.c_str());
  std::printf("naming  %s\n", std::string(naming_scheme_name(m.scheme())).c_str());
  std::printf("shards  %zu\n", m.num_shards());
  std::printf("layers  %lld\n", static_cast<long long>(m.num_layers()));
  std::printf(
      "dims    d=%lld H=%lld D=%lld R=%lld q_lora=%lld g=%lld d_g=%lld W=%lld m=%lld m'=%lld "
      "H_I=%lld D_I=%lld k=%lld\n",
      (long long)c.hidden_size, (long long)c.num_attention_heads, (long long)c.head_dim, (long long)c.qk_rope_head_dim,
      (long long)c.q_lora_rank, (long long)c.o_groups, (long long)c.o_lora_rank, (long long)c.sliding_window,
      (long long)c.compress_rate_csa, (long long)c.compress_rate_hca, (long long)c.index_n_heads,
      (long long)c.index_head_dim, (long long)c.index_topk);
  std::string others;
  for (const auto& [dtype, n] : m.other_tensors()) others += " " + dtype + " x" + std::to_string(n);
  std::printf("others  %s\n", others.empty() ? " none" : (others + "  (other modules: skipped, not read)").c_str());
  uint64_t total = 0;
  int bad_layers = 0;
  for (int64_t i = 0; i < m.num_layers(); ++i) {
    if (only >= 0 && i != only) continue;
    std::printf("\nlayer %lld  %s\n", static_cast<long long>(i), std::string(layer_type_name(m.layer_type(i))).c_str());
    uint64_t bytes = 0;
    for (const TensorSummary& t : m.layer_tensors(i)) {
      std::printf("  %-8s %-14s %12llu  %-34s %s\n", std::string(dtype_name(t.dtype)).c_str(),
                  shape_str(t.shape).c_str(), static_cast<unsigned long long>(t.bytes), t.shard.c_str(),
                  t.name.c_str());
      bytes += t.bytes;
    }
    std::printf("  attention bytes: %llu (%s)\n", static_cast<unsigned long long>(bytes), human(bytes).c_str());
    const std::vector<std::string> problems = m.layer_problems(i);
    if (problems.empty()) {
      std::printf("  in memory:");
      for (WeightFormat f : {WeightFormat::native, WeightFormat::bf16, WeightFormat::f32})
        std::printf("  %s %s", std::string(weight_format_name(f)).c_str(), human(m.layer_bytes(i, f)).c_str());
      std::printf("\n");
    }
    for (const std::string& p : problems) std::printf("  problem: %s\n", p.c_str());
    bad_layers += !problems.empty();
    total += bytes;
  }
  std::printf("\ntotal attention bytes: %llu (%s)\n", static_cast<unsigned long long>(total), human(total).c_str());
  if (bad_layers) std::printf("%d layer(s) cannot be loaded\n", bad_layers);
  return bad_layers;
}

}  // namespace

void add_info(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand("info",
                                 "List a model folder's attention layers: type, naming scheme, tensors "
                                 "(dtype, shape, bytes, shard) and byte totals");
  auto dir = std::make_shared<std::string>();
  auto layer = std::make_shared<int64_t>(-1);
  cmd->add_option("model_dir", *dir, "folder with config.json and model.safetensors[.index.json]")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--layer", *layer, "only this layer");
  cmd->callback([&rc, dir, layer] { rc = info(*dir, *layer) == 0 ? 0 : 1; });
}

}  // namespace dsv4::cli
