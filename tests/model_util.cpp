#include "model_util.h"

#include <gmock/gmock.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "dsv4/error.h"

namespace dsv4::model_test {

using json = nlohmann::json;
using ::testing::HasSubstr;

// The naming table of the issue, written out independently of the library's.
const std::vector<std::pair<std::string, std::string>> kNames = {
    {"q_a_proj.weight", "wq_a.weight"},
    {"q_a_norm.weight", "q_norm.weight"},
    {"q_b_proj.weight", "wq_b.weight"},
    {"kv_proj.weight", "wkv.weight"},
    {"kv_norm.weight", "kv_norm.weight"},
    {"o_a_proj.weight", "wo_a.weight"},
    {"o_b_proj.weight", "wo_b.weight"},
    {"sinks", "attn_sink"},
    {"compressor.kv_proj.weight", "compressor.wkv.weight"},
    {"compressor.gate_proj.weight", "compressor.wgate.weight"},
    {"compressor.position_bias", "compressor.ape"},
    {"compressor.kv_norm.weight", "compressor.norm.weight"},
    {"compressor.indexer.kv_proj.weight", "indexer.compressor.wkv.weight"},
    {"compressor.indexer.gate_proj.weight", "indexer.compressor.wgate.weight"},
    {"compressor.indexer.position_bias", "indexer.compressor.ape"},
    {"compressor.indexer.kv_norm.weight", "indexer.compressor.norm.weight"},
    {"compressor.indexer.q_b_proj.weight", "indexer.wq_b.weight"},
    {"compressor.indexer.scorer.weights_proj.weight", "indexer.weights_proj.weight"},
};

bool is_hf(NamingScheme s) { return s == NamingScheme::hugging_face; }

std::string full_name(NamingScheme s, int64_t layer, const std::string& hf) {
  for (const auto& [h, ds] : kNames)
    if (h == hf)
      return is_hf(s) ? "model.layers." + std::to_string(layer) + ".self_attn." + h
                      : "layers." + std::to_string(layer) + ".attn." + ds;
  ADD_FAILURE() << "no name " << hf;
  return hf;
}

std::string scale_of(NamingScheme s, const std::string& weight) {
  return is_hf(s) ? weight + "_scale_inv" : weight.substr(0, weight.size() - 7) + ".scale";
}

// A fresh folder per call; all are removed when the test binary exits.
fs::path fresh_dir(const std::string& name) {
  static struct Cleanup {
    std::vector<fs::path> dirs;
    ~Cleanup() {
      std::error_code ec;
      for (const fs::path& d : dirs) fs::remove_all(d, ec), fs::remove(d.string() + ".log", ec);
    }
  } cleanup;
  static int n = 0;
  const fs::path d = fs::path(::testing::TempDir()) /
                     ("dsv4_model_" + std::to_string(::getpid()) + "_" + std::to_string(n++) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  cleanup.dirs.push_back(d);
  return d;
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

std::string config_text(const Config& c, NamingScheme s) {
  return config_to_json_text(c, !is_hf(s));  // HF configs list layer_types, DeepSeek ones compress_ratios
}

// Writes config.json and the shards: one shard -> model.safetensors (unless
// `index`), else model-0000k.safetensors + model.safetensors.index.json
// (a tensor stored twice is indexed at its first shard).
void write_folder(const fs::path& dir, const Config& c, NamingScheme s,
                  const std::vector<std::vector<NamedTensor>>& shards, bool index) {
  write_text(dir / "config.json", config_text(c, s));
  if (shards.size() == 1 && !index) return write_safetensors(dir / "model.safetensors", shards[0]);
  json wm = json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = "model-0000" + std::to_string(k + 1) + ".safetensors";
    write_safetensors(dir / file, shards[k]);
    for (const NamedTensor& t : shards[k])
      if (!wm.contains(t.name)) wm[t.name] = file;
  }
  write_text(dir / "model.safetensors.index.json", json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump());
}

const Tensor& slot(const LayerWeights& w, const std::string& name) { return test::weight_named(w, name); }

// A layer's tensors under scheme s, stored as F32.
std::vector<NamedTensor> f32_tensors(const Config& c, LayerType t, const LayerWeights& w, NamingScheme s,
                                     int64_t layer) {
  std::vector<NamedTensor> out;
  for (const WeightSpec& e : weight_specs(c, t)) out.push_back(named(full_name(s, layer, e.name), slot(w, e.name)));
  return out;
}

Config three_layers() {
  Config c = test::small_config();
  c.layer_types = {LayerType::sliding, LayerType::csa, LayerType::hca};
  return c;
}

void expect_same_weights(const LayerWeights& got, const LayerWeights& want, const Config& c, LayerType t) {
  for (const WeightSpec& e : weight_specs(c, t)) {
    EXPECT_EQ(slot(got, e.name).shape, slot(want, e.name).shape) << e.name;
    EXPECT_TRUE(slot(got, e.name).data == slot(want, e.name).data) << e.name << " differs";
  }
}

// f must throw dsv4::Error whose message contains every phrase.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& phrases) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << phrases.front() << "'";
  } catch (const Error& e) {
    for (const std::string& p : phrases) EXPECT_THAT(e.what(), HasSubstr(p));
  }
}

// A valid 3-layer single-file folder in scheme s; returns its tensors too.
fs::path good_folder(NamingScheme s, std::vector<NamedTensor>* tensors, bool sharded) {
  const Config c = three_layers();
  std::mt19937 rng(1);
  std::vector<std::vector<NamedTensor>> shards(sharded ? 3 : 1);
  for (int64_t i = 0; i < 3; ++i)
    for (NamedTensor& t :
         f32_tensors(c, c.layer_types[size_t(i)], test::random_weights(c, c.layer_types[size_t(i)], rng), s, i))
      shards[sharded ? size_t(i) : 0].push_back(std::move(t));
  const fs::path dir = fresh_dir("good");
  write_folder(dir, c, s, shards);
  if (tensors)
    for (auto& sh : shards)
      for (auto& t : sh) tensors->push_back(t);
  return dir;
}

}  // namespace dsv4::model_test
