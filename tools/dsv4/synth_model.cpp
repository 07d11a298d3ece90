// dsv4 synth-model DIR: writes a small model folder (config.json + weights)
// that `dsv4 info` / `dsv4 run` load: by default 3 layers (sliding, CSA, HCA)
// at the conformance "small" dims with seeded random weights, or with
// --from-conformance one layer holding a conformance case's weights. Also
// writes sample_input.safetensors (`hidden_states`) to run it on.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "bench_model.h"
#include "commands.h"
#include "dsv4/atomic_file.h"
#include "dsv4/model.h"

namespace dsv4::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

struct SynthArgs {
  std::string dir, scheme = "hf", dtype = "f32", from, scale_dtype;
  bool sharded = false, other_modules = false;
  uint64_t seed = 0;
};

// Linear weights ~ U(±sqrt(3/fan_in)), norms ~ 1 ± 0.1, sinks and biases ~ U(±0.5).
LayerWeights random_weights(const Config& c, LayerType t, std::mt19937& rng) {
  LayerWeights w = empty_weights(t);
  for_each_weight(w, c, t, [&](const WeightSpec& e, Tensor& x) {
    x = Tensor(e.shape);
    const bool norm = e.role == WeightRole::norm;
    const double a = is_projection(e.role) ? std::sqrt(3.0 / double(e.shape[1])) : norm ? 0.1 : 0.5;
    std::uniform_real_distribution<float> u(-float(a), float(a));
    for (float& v : x.data) v = u(rng) + (norm ? 1.0f : 0.0f);
  });
  return w;
}

// f32 / bf16: every tensor in that dtype. fp8: the released dtypes of the
// weight table (FP8 E4M3 + block scales for the main projections and the
// indexer's q_b; BF16 for the compressor/indexer projections and the norms;
// F32 sinks and position biases).
void encode(std::vector<NamedTensor>& out, NamingScheme scheme, int64_t layer, const LayerWeights& w, LayerType t,
            const Config& c, const std::string& dtype, DType scale_dtype) {
  for_each_weight(w, c, t, [&](const WeightSpec& e, const Tensor& x) {
    const std::string name = checkpoint_name(scheme, layer, e.name);
    const DType as = dtype == "fp8" ? e.released : dtype == "bf16" ? DType::BF16 : DType::F32;
    if (as == DType::F32) return out.push_back(named(name, x));
    // UE8M0 scales are powers of two; F32 ones are the block max / 448.
    const StoredMatrix m = as == DType::BF16 ? quantize_bf16(x) : quantize_fp8_blocks(x, scale_dtype == DType::F8_E8M0);
    for (NamedTensor& nt : checkpoint_tensors(name, scale_name(scheme, name), m, scale_dtype))
      out.push_back(std::move(nt));
  });
}

void synth(const SynthArgs& a) {
  const NamingScheme scheme = a.scheme == "hf" ? NamingScheme::hugging_face : NamingScheme::deepseek;
  // The released V4 files (original names) carry UE8M0 scales; HF-converted and older ones fp32.
  const std::string sd = a.scale_dtype.empty() ? (a.scheme == "hf" ? "f32" : "e8m0") : a.scale_dtype;
  const DType scale_dtype = sd == "e8m0" ? DType::F8_E8M0 : DType::F32;
  Config c = small_dims();
  std::vector<LayerWeights> layers;
  Tensor sample;  // an input for `dsv4 run`
  if (!a.from.empty()) {
    const SafeTensors f = SafeTensors::open(a.from);
    const LayerSpec spec = layer_spec_from_json_text(f.meta("config"), a.from + " metadata 'config'");
    c = spec.config;
    c.layer_types = {spec.type};
    layers.push_back(load_layer_weights(f, c, spec.type));
    sample = f.f32("chunk0.hidden_states");
  } else {
    std::mt19937 rng(uint32_t(a.seed));
    for (LayerType t : c.layer_types) layers.push_back(random_weights(c, t, rng));
    sample = Tensor({1, 37, c.hidden_size});
    std::normal_distribution<float> g;
    for (float& v : sample.data) v = g(rng);
  }

  fs::create_directories(a.dir);
  const fs::path dir(a.dir);
  // Model::open prefers an index: drop the other layout's leftovers.
  fs::remove(dir / (a.sharded ? "model.safetensors" : "model.safetensors.index.json"));
  const size_t n = layers.size();
  json weight_map = json::object();
  uint64_t total = 0;
  std::vector<NamedTensor> all;
  for (size_t i = 0; i < n; ++i) {
    std::vector<NamedTensor> ts;
    encode(ts, scheme, int64_t(i), layers[i], c.layer_types[i], c, a.dtype, scale_dtype);
    if (!a.sharded) {
      for (NamedTensor& t : ts) all.push_back(std::move(t));
      continue;
    }
    char shard[64];
    std::snprintf(shard, sizeof shard, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    for (const NamedTensor& t : ts) weight_map[t.name] = shard, total += t.bytes.size();
    write_safetensors(dir / shard, ts, {{"format", "pt"}});
  }
  if (a.other_modules) {  // as the released shards: experts as I8 FP4 packs + E8M0 scales, hyper-connections,
                          // embeddings
    const std::string l0 = scheme == NamingScheme::hugging_face ? "model.layers.0." : "layers.0.";
    std::vector<NamedTensor> other = {
        {l0 + "ffn.experts.0.w1.weight", DType::I8, {8, 16}, std::vector<std::byte>(128, std::byte{0x11})},
        {l0 + "ffn.experts.0.w1.scale", DType::F8_E8M0, {8, 1}, std::vector<std::byte>(8, std::byte{127})},
        {l0 + "hc_attn_fn", DType::F32, {4}, std::vector<std::byte>(16)},
        {l0 + "attn_norm.weight", DType::BF16, {c.hidden_size}, std::vector<std::byte>(size_t(2 * c.hidden_size))},
        {scheme == NamingScheme::hugging_face ? "model.embed_tokens.weight" : "embed.weight",
         DType::BF16,
         {16, c.hidden_size},
         std::vector<std::byte>(size_t(32 * c.hidden_size))}};
    if (a.sharded) {
      for (const NamedTensor& t : other) weight_map[t.name] = "model-others.safetensors", total += t.bytes.size();
      write_safetensors(dir / "model-others.safetensors", other, {{"format", "pt"}});
    } else {
      for (NamedTensor& t : other) all.push_back(std::move(t));
    }
  }
  if (a.sharded) {
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(dir / "model.safetensors.index.json", index.dump(2) + "\n", "synth-model");
  } else {
    write_safetensors(dir / "model.safetensors", all, {{"format", "pt"}});
  }
  write_safetensors(dir / "sample_input.safetensors", {named("hidden_states", sample)});
  // Last: every file is written atomically, so a folder a killed synth-model
  // leaves holds whole files only, and no config.json unless it had one before.
  write_file_atomic(dir / "config.json", config_to_json_text(c, scheme == NamingScheme::deepseek, 2) + "\n",
                    "synth-model");
  std::printf("wrote %s: %zu layer(s), %s names, %s weights, %s\n", a.dir.c_str(), n,
              std::string(naming_scheme_name(scheme)).c_str(), a.dtype.c_str(),
              a.sharded ? "one shard per layer + index" : "one model.safetensors");
  std::printf("sample input (hidden_states %s): %s\n", shape_str(sample.shape).c_str(),
              (dir / "sample_input.safetensors").c_str());
}

}  // namespace

void add_synth_model(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand("synth-model",
                                 "Write a small test model folder (3 layers: sliding, CSA, HCA at "
                                 "the conformance 'small' dims, seeded random weights)");
  auto a = std::make_shared<SynthArgs>();
  cmd->add_option("dir", a->dir, "output folder (created)")->required();
  cmd->add_option("--scheme", a->scheme, "tensor names: hf (model.layers.N.self_attn.*) or original (layers.N.attn.*)")
      ->check(CLI::IsMember({"hf", "original"}));
  cmd->add_option("--dtype", a->dtype,
                  "f32, bf16, or fp8 (FP8 E4M3 projections + 128x128 block scales, BF16 "
                  "compressor/indexer projections)")
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  cmd->add_option("--scale-dtype", a->scale_dtype,
                  "fp8 block scales: e8m0 (UE8M0 `.scale`, the released V4 files; default with --scheme original) "
                  "or f32 (`weight_scale_inv`; default with --scheme hf)")
      ->check(CLI::IsMember({"f32", "e8m0"}));
  cmd->add_flag("--other-modules", a->other_modules,
                "also write tensors of other modules as the released shards hold them (experts as I8 + F8_E8M0, "
                "hyper-connections, norms, embeddings); loaders must skip them");
  cmd->add_flag("--sharded", a->sharded, "one shard per layer plus model.safetensors.index.json");
  cmd->add_option("--seed", a->seed, "random seed");
  cmd->add_option("--from-conformance", a->from, "re-pack this conformance case's weights as a one-layer model")
      ->check(CLI::ExistingFile);
  cmd->callback([&rc, a] {
    synth(*a);
    rc = 0;
  });
}

}  // namespace dsv4::cli
