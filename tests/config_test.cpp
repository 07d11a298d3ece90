// Config presets, validation, fingerprint and JSON parsing (conformance
// metadata and Hugging Face / DeepSeek config.json forms).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dsv4/config.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;
using testing::HasSubstr;

// Runs f, expects a dsv4::Error, returns its message.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected dsv4::Error";
  return "";
}

size_t count(const std::vector<LayerType>& v, LayerType t) { return size_t(std::count(v.begin(), v.end(), t)); }

// ---------------------------------------------------------------- layer types

TEST(ConfigLayerType, NamesRoundTrip) {
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca})
    EXPECT_EQ(parse_layer_type(layer_type_name(t)), t);
  EXPECT_EQ(layer_type_name(LayerType::sliding), "sliding_attention");
  EXPECT_EQ(layer_type_name(LayerType::csa), "compressed_sparse_attention");
  EXPECT_EQ(layer_type_name(LayerType::hca), "heavily_compressed_attention");
  EXPECT_EQ(parse_layer_type("swa"), LayerType::sliding);
  EXPECT_EQ(parse_layer_type("sliding"), LayerType::sliding);
  EXPECT_EQ(parse_layer_type("csa"), LayerType::csa);
  EXPECT_EQ(parse_layer_type("hca"), LayerType::hca);
  EXPECT_THAT(error_of([] { parse_layer_type("full_attention"); }), HasSubstr("full_attention"));
}

TEST(ConfigLayerType, CompressRate) {
  Config c;
  c.compress_rate_csa = 5;
  c.compress_rate_hca = 77;
  EXPECT_EQ(c.compress_rate(LayerType::sliding), 0);
  EXPECT_EQ(c.compress_rate(LayerType::csa), 5);
  EXPECT_EQ(c.compress_rate(LayerType::hca), 77);
}

// ---------------------------------------------------------------- presets

void expect_common_v4(const Config& c) {
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.o_lora_rank, 1024);
  EXPECT_EQ(c.sliding_window, 128);
  EXPECT_EQ(c.compress_rate_csa, 4);
  EXPECT_EQ(c.compress_rate_hca, 128);
  EXPECT_EQ(c.index_n_heads, 64);
  EXPECT_EQ(c.index_head_dim, 128);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.compress_rope_theta, 160000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_EQ(c.rope_scaling.factor, 16.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 65536);
  EXPECT_EQ(c.rope_scaling.beta_fast, 32.0);
  EXPECT_EQ(c.rope_scaling.beta_slow, 1.0);
  EXPECT_NO_THROW(c.validate());
}

TEST(ConfigPreset, Flash) {
  const Config c = Config::preset("v4-flash");
  expect_common_v4(c);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_attention_heads, 64);
  EXPECT_EQ(c.q_lora_rank, 1024);
  EXPECT_EQ(c.o_groups, 8);
  EXPECT_EQ(c.index_topk, 512);
  ASSERT_EQ(c.layer_types.size(), 43u);
  EXPECT_EQ(count(c.layer_types, LayerType::sliding), 2u);
  EXPECT_EQ(count(c.layer_types, LayerType::csa), 21u);
  EXPECT_EQ(count(c.layer_types, LayerType::hca), 20u);
  EXPECT_EQ(c.layer_types[0], LayerType::sliding);
  EXPECT_EQ(c.layer_types[1], LayerType::sliding);
  for (size_t i = 2; i < 43; ++i) EXPECT_EQ(c.layer_types[i], i % 2 == 0 ? LayerType::csa : LayerType::hca) << i;
}

TEST(ConfigPreset, Pro) {
  const Config c = Config::preset("v4-pro");
  expect_common_v4(c);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.o_groups, 16);
  EXPECT_EQ(c.index_topk, 1024);
  ASSERT_EQ(c.layer_types.size(), 61u);
  EXPECT_EQ(count(c.layer_types, LayerType::sliding), 0u);
  EXPECT_EQ(count(c.layer_types, LayerType::csa), 30u);
  EXPECT_EQ(count(c.layer_types, LayerType::hca), 31u);
  EXPECT_EQ(c.layer_types[0], LayerType::hca);
  EXPECT_EQ(c.layer_types[1], LayerType::hca);
  for (size_t i = 2; i < 61; ++i) EXPECT_EQ(c.layer_types[i], i % 2 == 0 ? LayerType::csa : LayerType::hca) << i;
}

TEST(ConfigPreset, UnknownListsKnownNames) {
  const std::string msg = error_of([] { Config::preset("v3"); });
  EXPECT_THAT(msg, HasSubstr("v3"));
  EXPECT_THAT(msg, HasSubstr("v4-flash"));
  EXPECT_THAT(msg, HasSubstr("v4-pro"));
}

// ---------------------------------------------------------------- validate

TEST(ConfigValidate, RejectsEachBadValue) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Case {
    std::function<void(Config&)> edit;
    std::string key;  // must appear in the message
  };
  const std::vector<Case> cases = {
      {[](Config& c) { c.hidden_size = 0; }, "hidden_size"},
      {[](Config& c) { c.num_attention_heads = -1; }, "num_attention_heads"},
      {[](Config& c) { c.head_dim = 0; }, "head_dim"},
      {[](Config& c) { c.q_lora_rank = 0; }, "q_lora_rank"},
      {[](Config& c) { c.o_groups = 0; }, "o_groups"},
      {[](Config& c) { c.o_lora_rank = 0; }, "o_lora_rank"},
      {[](Config& c) { c.sliding_window = 0; }, "sliding_window"},
      {[](Config& c) { c.compress_rate_csa = 0; }, "compress_rate_csa"},
      {[](Config& c) { c.compress_rate_hca = -3; }, "compress_rate_hca"},
      {[](Config& c) { c.index_n_heads = 0; }, "index_n_heads"},
      {[](Config& c) { c.index_head_dim = 0; }, "index_head_dim"},
      {[](Config& c) { c.index_topk = 0; }, "index_topk"},
      {[](Config& c) { c.qk_rope_head_dim = 0; }, "qk_rope_head_dim"},
      {[](Config& c) { c.qk_rope_head_dim = -2; }, "qk_rope_head_dim"},
      {[](Config& c) { c.qk_rope_head_dim = 63; }, "qk_rope_head_dim"},
      {[](Config& c) { c.qk_rope_head_dim = 514; }, "qk_rope_head_dim"},
      {[](Config& c) { c.qk_rope_head_dim = 130; }, "index_head_dim < rope dim"},
      {[](Config& c) { c.o_groups = 3; }, "o_groups"},
      {[](Config& c) { c.rope_theta = 0; }, "rope_theta"},
      {[nan](Config& c) { c.rope_theta = nan; }, "rope_theta"},
      {[](Config& c) { c.compress_rope_theta = -1; }, "compress_rope_theta"},
      {[inf](Config& c) { c.compress_rope_theta = inf; }, "compress_rope_theta"},
      {[](Config& c) { c.rms_norm_eps = 0; }, "rms_norm_eps"},
      {[nan](Config& c) { c.rms_norm_eps = nan; }, "rms_norm_eps"},
      {[](Config& c) { c.rope_scaling.type = "linear"; }, "rope_scaling.type"},
      {[](Config& c) { c.rope_scaling.factor = 0.5; }, "rope_scaling.factor"},
      {[inf](Config& c) { c.rope_scaling.factor = inf; }, "rope_scaling.factor"},
      {[](Config& c) { c.rope_scaling.original_max_position_embeddings = 0; },
       "rope_scaling.original_max_position_embeddings"},
      {[](Config& c) { c.rope_scaling.beta_fast = 1; }, "rope_scaling.beta_fast"},
      {[](Config& c) { c.rope_scaling.beta_slow = 0; }, "rope_scaling.beta_slow"},
      {[](Config& c) { c.rope_scaling.beta_fast = -5; }, "rope_scaling.beta_fast"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i) + " (" + cases[i].key + ")");
    Config c = Config::preset("v4-flash");
    cases[i].edit(c);
    EXPECT_THAT(error_of([&] { c.validate(); }), HasSubstr(cases[i].key));
  }
}

TEST(ConfigValidate, MessageNamesValue) {
  Config c;
  c.sliding_window = -7;
  EXPECT_THAT(error_of([&] { c.validate(); }), HasSubstr("-7"));
}

TEST(ConfigValidate, AcceptsNoScalingAndEdgeValues) {
  Config c;
  c.rope_scaling.type = "";
  c.rope_scaling.factor = 0;  // unused without YaRN
  EXPECT_NO_THROW(c.validate());
  c = Config();
  c.qk_rope_head_dim = 128;  // == index_head_dim, <= head_dim
  c.rope_scaling.factor = 1;
  EXPECT_NO_THROW(c.validate());
}

// ---------------------------------------------------------------- fingerprint

TEST(ConfigFingerprint, DeterministicAndSensitive) {
  const Config a = Config::preset("v4-flash");
  const std::string fa = a.fingerprint();
  EXPECT_EQ(fa.size(), 16u);
  EXPECT_EQ(fa.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(fa, Config::preset("v4-flash").fingerprint());
  EXPECT_NE(fa, Config::preset("v4-pro").fingerprint());

  Config b = a;
  b.layer_types.clear();  // layer_types are not part of the digest
  EXPECT_EQ(b.fingerprint(), fa);

  const std::vector<std::function<void(Config&)>> edits = {
      [](Config& c) { c.index_topk = 511; },
      [](Config& c) { c.compress_rate_hca = 64; },
      [](Config& c) { c.rms_norm_eps = 1e-5; },
      [](Config& c) { c.compress_rope_theta = 160000.0000001; },
      [](Config& c) { c.rope_scaling.type = ""; },
      [](Config& c) { c.rope_scaling.beta_slow = 2; },
      [](Config& c) { c.rope_scaling.original_max_position_embeddings = 4096; },
  };
  for (size_t i = 0; i < edits.size(); ++i) {
    Config c = a;
    edits[i](c);
    EXPECT_NE(c.fingerprint(), fa) << "edit " << i;
  }
}

// config_to_json_text is what synth-model, info --json and the tests write:
// it reads back as the same Config, both ways of listing the layers.
TEST(ConfigJson, WriterRoundTrips) {
  Config unscaled = Config::preset("v4-flash");
  unscaled.rope_scaling.type = "";
  for (const Config& c : {Config::preset("v4-flash"), Config::preset("v4-pro"), unscaled}) {
    for (bool ratios : {false, true}) {
      const std::string text = config_to_json_text(c, ratios, ratios ? 2 : -1);
      EXPECT_EQ(json::parse(text).contains("compress_ratios"), ratios);
      const Config back = config_from_json_text(text, "written");
      Config want = c;
      if (c.rope_scaling.type.empty()) {
        EXPECT_TRUE(json::parse(text)["rope_scaling"].is_null());
        want.rope_scaling = back.rope_scaling;  // unscaled: the other fields are not written
        EXPECT_EQ(back.rope_scaling.type, "");
      }
      EXPECT_EQ(back.fingerprint(), want.fingerprint()) << text;
      EXPECT_EQ(back.layer_types, c.layer_types) << text;
    }
  }
}

// ---------------------------------------------------------------- conformance configs

// The `config` metadata string of a safetensors file (8-byte LE length + JSON).
std::string conformance_config(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  unsigned char len[8] = {};
  f.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  std::string header(n, '\0');
  f.read(header.data(), std::streamsize(n));
  if (!f) return "";
  return json::parse(header)["__metadata__"]["config"].get<std::string>();
}

TEST(ConfigJson, AllConformanceConfigs) {
  const std::filesystem::path dir = std::filesystem::path(DSV4_TEST_DATA) / "conformance";
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    ++files;
    const std::string name = entry.path().filename().string();
    SCOPED_TRACE(name);
    const std::string text = conformance_config(entry.path());
    ASSERT_FALSE(text.empty());
    const LayerSpec s = layer_spec_from_json_text(text, name);
    const Config& c = s.config;
    const std::string type = name.substr(name.find('_') + 1, 3);
    EXPECT_EQ(s.type, parse_layer_type(type));
    EXPECT_TRUE(c.layer_types.empty());
    EXPECT_EQ(c.compress_rate_csa, 4);
    EXPECT_EQ(c.rope_theta, 10000.0);
    EXPECT_EQ(c.compress_rope_theta, 160000.0);
    EXPECT_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_EQ(c.rope_scaling.type, "yarn");
    EXPECT_EQ(c.rope_scaling.factor, 16.0);
    EXPECT_EQ(c.rope_scaling.beta_fast, 32.0);
    EXPECT_EQ(c.rope_scaling.beta_slow, 1.0);
    if (name.rfind("small_", 0) == 0) {
      EXPECT_EQ(c.hidden_size, 64);
      EXPECT_EQ(c.num_attention_heads, 4);
      EXPECT_EQ(c.head_dim, 32);
      EXPECT_EQ(c.qk_rope_head_dim, 8);
      EXPECT_EQ(c.q_lora_rank, 32);
      EXPECT_EQ(c.o_groups, 2);
      EXPECT_EQ(c.o_lora_rank, 16);
      EXPECT_EQ(c.sliding_window, 8);
      EXPECT_EQ(c.compress_rate_hca, 8);
      EXPECT_EQ(c.index_n_heads, 4);
      EXPECT_EQ(c.index_head_dim, 16);
      EXPECT_EQ(c.index_topk, 3);
      EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 64);
    } else {
      ASSERT_EQ(name.rfind("medium_", 0), 0u);
      EXPECT_EQ(c.hidden_size, 256);
      EXPECT_EQ(c.num_attention_heads, 8);
      EXPECT_EQ(c.head_dim, 64);
      EXPECT_EQ(c.qk_rope_head_dim, 16);
      EXPECT_EQ(c.q_lora_rank, 64);
      EXPECT_EQ(c.o_groups, 4);
      EXPECT_EQ(c.o_lora_rank, 32);
      EXPECT_EQ(c.sliding_window, 16);
      EXPECT_EQ(c.compress_rate_hca, 32);
      EXPECT_EQ(c.index_n_heads, 8);
      EXPECT_EQ(c.index_head_dim, 32);
      EXPECT_EQ(c.index_topk, 8);
      EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 256);
    }
    // The plain-config entry point accepts the same text.
    EXPECT_EQ(config_from_json_text(text, name).fingerprint(), c.fingerprint());
  }
  EXPECT_EQ(files, 27);
}

// ---------------------------------------------------------------- HF config.json

// A small HF-style config without any per-layer type list.
json hf_base() {
  return json{{"architectures", {"DeepseekV4ForCausalLM"}},
              {"vocab_size", 129280},
              {"hidden_size", 64},
              {"num_attention_heads", 4},
              {"head_dim", 32},
              {"qk_rope_head_dim", 8},
              {"q_lora_rank", 32},
              {"o_groups", 2},
              {"o_lora_rank", 16},
              {"sliding_window", 8},
              {"index_n_heads", 4},
              {"index_head_dim", 16},
              {"index_topk", 3},
              {"rope_theta", 10000.0},
              {"compress_rope_theta", 160000.0},
              {"max_position_embeddings", 1024},
              {"rms_norm_eps", 1e-6},
              {"rope_scaling",
               {{"rope_type", "yarn"},
                {"factor", 16.0},
                {"original_max_position_embeddings", 64},
                {"beta_fast", 32},
                {"beta_slow", 1}}}};
}

Config parse(const json& j) { return config_from_json_text(j.dump(), "config.json"); }
std::string parse_error(const json& j) {
  return error_of([&] { config_from_json_text(j.dump(), "model/config.json"); });
}

constexpr auto S = LayerType::sliding;
constexpr auto C = LayerType::csa;
constexpr auto H = LayerType::hca;

TEST(ConfigJson, HfLayerTypesAndCompressRates) {
  json j = hf_base();
  j["num_hidden_layers"] = 4;
  j["layer_types"] = {"sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                      "compressed_sparse_attention"};
  j["compress_rates"] = {{"compressed_sparse_attention", 4}, {"heavily_compressed_attention", 16}};
  const Config c = parse(j);
  EXPECT_EQ(c.layer_types, (std::vector<LayerType>{S, C, H, C}));
  EXPECT_EQ(c.compress_rate_csa, 4);
  EXPECT_EQ(c.compress_rate_hca, 16);
  EXPECT_EQ(c.rope_scaling.type, "yarn");  // from rope_type
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(c.hidden_size, 64);
}

TEST(ConfigJson, HfDefaults) {
  json j = hf_base();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j.erase("compress_rope_theta");
  j.erase("rms_norm_eps");
  j["layer_types"] = {"heavily_compressed_attention"};
  const Config c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, "");  // no YaRN: plain RoPE
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.compress_rope_theta, 160000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.compress_rate_csa, 4);
  EXPECT_EQ(c.compress_rate_hca, 128);

  j["rope_scaling"] = nullptr;  // HF writes null for "no scaling"
  EXPECT_EQ(parse(j).rope_scaling.type, "");
  j["rope_scaling"] = {{"type", "default"}};
  EXPECT_EQ(parse(j).rope_scaling.type, "");
  // YaRN without L0 falls back to max_position_embeddings; betas default 32/1.
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}};
  const Config y = parse(j);
  EXPECT_EQ(y.rope_scaling.factor, 4.0);
  EXPECT_EQ(y.rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_EQ(y.rope_scaling.beta_fast, 32.0);
  EXPECT_EQ(y.rope_scaling.beta_slow, 1.0);
}

TEST(ConfigJson, CompressRatiosWithMtpEntry) {
  json j = hf_base();
  j["num_hidden_layers"] = 5;
  j["compress_ratios"] = {0, 0, 4, 128, 4, 0};  // last entry: MTP layer, ignored
  const Config c = parse(j);
  EXPECT_EQ(c.layer_types, (std::vector<LayerType>{S, S, C, H, C}));
  EXPECT_EQ(c.compress_rate_csa, 4);
  EXPECT_EQ(c.compress_rate_hca, 128);

  // Without num_hidden_layers every entry is a layer; the HCA rate comes from the list.
  json k = hf_base();
  k["compress_ratios"] = {128.0, 128, 4, 32};  // 32 != 4 -> HCA, but 128 too: mismatch
  EXPECT_THAT(parse_error(k), HasSubstr("compress_ratios[3]"));
  k["compress_ratios"] = {32, 32, 4};
  const Config d = parse(k);
  EXPECT_EQ(d.layer_types, (std::vector<LayerType>{H, H, C}));
  EXPECT_EQ(d.compress_rate_hca, 32);
}

TEST(ConfigJson, CompressRatiosCsaRateFromCompressRates) {
  json j = hf_base();
  j["compress_rates"] = {{"compressed_sparse_attention", 2}};
  j["compress_ratios"] = {0, 2, 16};
  const Config c = parse(j);
  EXPECT_EQ(c.layer_types, (std::vector<LayerType>{S, C, H}));
  EXPECT_EQ(c.compress_rate_csa, 2);
  EXPECT_EQ(c.compress_rate_hca, 16);
}

TEST(ConfigJson, LayerTypesAndCompressRatiosMustAgree) {
  json j = hf_base();
  j["num_hidden_layers"] = 3;
  j["layer_types"] = {"sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"};
  j["compress_ratios"] = {0, 4, 128, 4};
  EXPECT_EQ(parse(j).layer_types, (std::vector<LayerType>{S, C, H}));
  j["compress_ratios"] = {0, 128, 128, 4};
  EXPECT_THAT(parse_error(j), HasSubstr("disagree"));
  // An HCA rate in compress_ratios must match compress_rates.
  j["compress_ratios"] = {0, 4, 64};
  j["compress_rates"] = {{"heavily_compressed_attention", 128}};
  EXPECT_THAT(parse_error(j), HasSubstr("compress_rate_hca"));
  // So must the top-level key and compress_rates.
  json k = hf_base();
  k["compress_rate_csa"] = 4;
  k["compress_rates"] = {{"compressed_sparse_attention", 8}};
  EXPECT_THAT(parse_error(k), HasSubstr("compress_rate_csa"));
}

TEST(ConfigJson, InconsistentLayerLists) {
  json j = hf_base();
  j["layer_types"] = {"sliding_attention", "full_attention"};
  std::string msg = parse_error(j);
  EXPECT_THAT(msg, HasSubstr("full_attention"));
  EXPECT_THAT(msg, HasSubstr("layer_types[1]"));
  EXPECT_THAT(msg, HasSubstr("model/config.json"));

  j["layer_types"] = {"sliding_attention", "hca"};
  j["num_hidden_layers"] = 3;
  EXPECT_THAT(parse_error(j), HasSubstr("num_hidden_layers"));

  json k = hf_base();
  k["num_hidden_layers"] = 4;
  k["compress_ratios"] = {0, 4, 128};  // too short
  msg = parse_error(k);
  EXPECT_THAT(msg, HasSubstr("compress_ratios"));
  EXPECT_THAT(msg, HasSubstr("model/config.json"));

  k["compress_ratios"] = {0, 4, 128, 64};  // two HCA rates
  EXPECT_THAT(parse_error(k), HasSubstr("compress_ratios[3]"));
  k["compress_ratios"] = {0, 4, -128, 4};
  EXPECT_THAT(parse_error(k), HasSubstr("compress_ratios[2]"));
  k["compress_ratios"] = "0,4";
  EXPECT_THAT(parse_error(k), HasSubstr("compress_ratios"));
  k.erase("compress_ratios");
  k["layer_types"] = "sliding_attention";
  EXPECT_THAT(parse_error(k), HasSubstr("layer_types"));
  k["layer_types"] = {1, 2};
  EXPECT_THAT(parse_error(k), HasSubstr("layer_types[0]"));
}

TEST(ConfigJson, MissingRequiredKeys) {
  for (const char* key :
       {"hidden_size", "num_attention_heads", "head_dim", "qk_rope_head_dim", "q_lora_rank", "o_groups", "o_lora_rank",
        "sliding_window", "index_n_heads", "index_head_dim", "index_topk"}) {
    SCOPED_TRACE(key);
    json j = hf_base();
    j.erase(key);
    const std::string msg = parse_error(j);
    EXPECT_THAT(msg, HasSubstr(key));
    EXPECT_THAT(msg, HasSubstr("model/config.json"));
    j[key] = nullptr;  // null counts as missing
    EXPECT_THAT(parse_error(j), HasSubstr(key));
  }
  json j = hf_base();
  j["rope_scaling"].erase("factor");
  EXPECT_THAT(parse_error(j), HasSubstr("rope_scaling.factor"));
  json k = hf_base();
  k.erase("max_position_embeddings");
  k["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_THAT(parse_error(k), HasSubstr("rope_scaling.original_max_position_embeddings"));
}

TEST(ConfigJson, WrongTypes) {
  const std::vector<std::pair<std::string, json>> bad = {
      {"hidden_size", "64"},
      {"head_dim", -32},
      {"index_topk", 2.5},
      {"o_groups", true},
      {"sliding_window", json::array({8})},
      {"rope_theta", "1e4"},
      {"rms_norm_eps", false},
      {"num_hidden_layers", -1},
  };
  for (const auto& [key, value] : bad) {
    SCOPED_TRACE(key);
    json j = hf_base();
    j[key] = value;
    const std::string msg = parse_error(j);
    EXPECT_THAT(msg, HasSubstr(key));
    EXPECT_THAT(msg, HasSubstr("model/config.json"));
  }
  json j = hf_base();
  j["rope_scaling"]["factor"] = "16";
  EXPECT_THAT(parse_error(j), HasSubstr("rope_scaling.factor"));
  j = hf_base();
  j["rope_scaling"] = "yarn";
  EXPECT_THAT(parse_error(j), HasSubstr("rope_scaling"));
  j = hf_base();
  j["rope_scaling"]["type"] = "linear";  // disagrees with rope_type
  EXPECT_THAT(parse_error(j), HasSubstr("rope_type"));
  j["rope_scaling"].erase("rope_type");  // parses, then validate() rejects it
  EXPECT_THAT(parse_error(j), HasSubstr("rope_scaling.type"));
  j = hf_base();
  j["compress_rates"] = {{"heavily_compressed_attention", "128"}};
  EXPECT_THAT(parse_error(j), HasSubstr("compress_rates.heavily_compressed_attention"));

  // Integral floats are fine.
  j = hf_base();
  j["hidden_size"] = 64.0;
  EXPECT_EQ(parse(j).hidden_size, 64);
}

TEST(ConfigJson, ValidationAndSyntaxErrorsNameSource) {
  json j = hf_base();
  j["o_groups"] = 3;  // 4*32 % 3 != 0
  std::string msg = parse_error(j);
  EXPECT_THAT(msg, HasSubstr("o_groups"));
  EXPECT_THAT(msg, HasSubstr("model/config.json"));
  j = hf_base();
  j["hidden_size"] = 0;
  EXPECT_THAT(parse_error(j), HasSubstr("hidden_size"));

  msg = error_of([] { config_from_json_text("{\"hidden_size\": 64,", "broken.json"); });
  EXPECT_THAT(msg, HasSubstr("broken.json"));
  EXPECT_THAT(msg, HasSubstr("invalid JSON"));
  EXPECT_THAT(error_of([] { config_from_json_text("[1, 2]", "list.json"); }), HasSubstr("list.json"));
}

TEST(ConfigJson, LayerSpecRequiresLayerType) {
  json j = hf_base();
  for (const char* model_key : {"architectures", "vocab_size"}) j.erase(model_key);  // a layer config refuses them
  std::string msg = error_of([&] { layer_spec_from_json_text(j.dump(), "case.safetensors"); });
  EXPECT_THAT(msg, HasSubstr("layer_type"));
  EXPECT_THAT(msg, HasSubstr("case.safetensors"));
  j["layer_type"] = "mystery_attention";
  msg = error_of([&] { layer_spec_from_json_text(j.dump(), "case.safetensors"); });
  EXPECT_THAT(msg, HasSubstr("mystery_attention"));
  EXPECT_THAT(msg, HasSubstr("case.safetensors"));
  j["layer_type"] = 4;
  EXPECT_THAT(error_of([&] { layer_spec_from_json_text(j.dump(), "x"); }), HasSubstr("layer_type"));
  j["layer_type"] = "heavily_compressed_attention";
  EXPECT_EQ(layer_spec_from_json_text(j.dump(), "x").type, LayerType::hca);
}

TEST(ConfigJson, FromFile) {
  const std::filesystem::path missing = std::filesystem::path(testing::TempDir()) / "dsv4_no_such_config.json";
  EXPECT_THAT(error_of([&] { config_from_file(missing); }), HasSubstr(missing.string()));

  const std::filesystem::path p = std::filesystem::path(testing::TempDir()) / "dsv4_config_test_config.json";
  json j = hf_base();
  j["hidden_size"] = -1;
  std::ofstream(p) << j.dump();
  EXPECT_THAT(error_of([&] { config_from_file(p); }), HasSubstr(p.string()));
  j["hidden_size"] = 64;
  j["compress_ratios"] = {0, 4};
  std::ofstream(p) << j.dump(2);
  const Config c = config_from_file(p);
  EXPECT_EQ(c.layer_types, (std::vector<LayerType>{S, C}));
  std::filesystem::remove(p);
}

}  // namespace
}  // namespace dsv4
