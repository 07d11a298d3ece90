// The released checkpoints' conventions: transformers' rope_parameters in
// config.json, the indexer head weights spelled without "scorer.", shards that
// also hold other modules in dtypes dsv4 does not decode (I8 experts).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dsv4/config.h"
#include "dsv4/model.h"
#include "test_util.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

json flash_json() {
  const Config c = Config::preset("v4-flash");
  return json{{"hidden_size", c.hidden_size},
              {"num_attention_heads", c.num_attention_heads},
              {"head_dim", c.head_dim},
              {"q_lora_rank", c.q_lora_rank},
              {"o_groups", c.o_groups},
              {"o_lora_rank", c.o_lora_rank},
              {"sliding_window", c.sliding_window},
              {"index_n_heads", c.index_n_heads},
              {"index_head_dim", c.index_head_dim},
              {"index_topk", c.index_topk},
              {"num_hidden_layers", 3},
              {"compress_ratios", {0, 4, 128, 0}}};
}

json rope_parameters() {
  return {{"main", {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.125}}},
          {"compress",
           {{"rope_type", "yarn"},
            {"rope_theta", 160000.0},
            {"partial_rotary_factor", 0.125},
            {"factor", 16.0},
            {"original_max_position_embeddings", 65536},
            {"beta_fast", 32},
            {"beta_slow", 1}}}};
}

void expect_error(const std::string& text, const std::string& phrase) {
  try {
    config_from_json_text(text, "config.json");
    ADD_FAILURE() << "no error, expected '" << phrase << "'";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(phrase));
  }
}

TEST(ReleaseFormat, RopeParametersEqualRopeScaling) {
  json a = flash_json();
  a["qk_rope_head_dim"] = 64;
  a["rope_theta"] = 10000.0;
  a["compress_rope_theta"] = 160000.0;
  a["rope_scaling"] = {{"type", "yarn"},
                       {"factor", 16.0},
                       {"original_max_position_embeddings", 65536},
                       {"beta_fast", 32},
                       {"beta_slow", 1}};
  json b = flash_json();
  b["rope_parameters"] = rope_parameters();
  const Config ca = config_from_json_text(a.dump(), "a"), cb = config_from_json_text(b.dump(), "b");
  EXPECT_EQ(cb.qk_rope_head_dim, 64);
  EXPECT_EQ(ca.fingerprint(), cb.fingerprint());
  EXPECT_EQ(cb.layer_types.size(), 3u);  // the MTP entry is not a layer
  EXPECT_EQ(cb.fingerprint(), [] {
    Config p = Config::preset("v4-flash");
    return p.fingerprint();
  }());
}

TEST(ReleaseFormat, RopeParametersErrors) {
  json b = flash_json();
  b["rope_parameters"] = rope_parameters();
  b["rope_parameters"]["main"]["partial_rotary_factor"] = 0.25;
  expect_error(b.dump(), "partial_rotary_factor (0.125) differs");
  b["rope_parameters"] = rope_parameters();
  b["rope_parameters"].erase("compress");
  expect_error(b.dump(), "needs both 'main' and 'compress'");
  b["rope_parameters"] = rope_parameters();
  b["qk_rope_head_dim"] = 32;
  expect_error(b.dump(), "qk_rope_head_dim (32) and rope_parameters' partial_rotary_factor (64 dims) disagree");
  b.erase("qk_rope_head_dim");
  b["rope_parameters"]["main"]["rope_type"] = "yarn";
  expect_error(b.dump(), "rope_parameters.main: rope_type 'yarn'");
  b["rope_parameters"] = rope_parameters();
  b["rope_scaling"] = {{"type", "yarn"}};
  expect_error(b.dump(), "both 'rope_parameters' and 'rope_scaling'");
}

TEST(ReleaseFormat, IndexerHeadWeightsWithoutScorer) {
  Config c = test::small_config();
  c.layer_types = {LayerType::csa};
  std::mt19937 rng(3);
  LayerWeights w = test::random_weights(c, LayerType::csa, rng);
  const std::string scorer = "compressor.indexer.scorer.weights_proj.weight";
  const std::string bare = "model.layers.0.self_attn.compressor.indexer.weights_proj.weight";
  std::vector<NamedTensor> ts;
  for (const WeightSpec& e : weight_specs(c, LayerType::csa))
    ts.push_back(named(e.name == scorer ? bare : checkpoint_name(NamingScheme::hugging_face, 0, e.name),
                       test::weight_named(w, e.name)));
  // Other modules as the released shards hold them: read never, listed by dtype.
  ts.push_back(NamedTensor{"model.layers.0.mlp.experts.0.w1.weight", DType::I8, {4, 8}, std::vector<std::byte>(32)});
  ts.push_back(NamedTensor{"model.layers.0.mlp.experts.0.w1.scale", DType::F8_E8M0, {4, 1}, std::vector<std::byte>(4)});
  ts.push_back(NamedTensor{"model.embed_tokens.weight", DType::BF16, {3, 64}, std::vector<std::byte>(384)});
  const auto dir = std::filesystem::temp_directory_path() / ("dsv4_noscorer_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << config_to_json_text(c);
  write_safetensors(dir / "model.safetensors", ts);
  {
    const Model m = Model::open(dir);
    EXPECT_TRUE(m.layer_problems(0).empty());
    EXPECT_EQ(m.load_layer(0).indexer->weights_proj.data, w.indexer->weights_proj.data);
    EXPECT_EQ(m.other_tensors(), (std::map<std::string, int64_t>{{"BF16", 1}, {"F8_E8M0", 1}, {"I8", 1}}));
  }
  ts.push_back(named(checkpoint_name(NamingScheme::hugging_face, 0, scorer), w.indexer->weights_proj));
  write_safetensors(dir / "model.safetensors", ts);
  const std::vector<std::string> problems = Model::open(dir).layer_problems(0);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_THAT(problems[0], HasSubstr("two spellings of '" + scorer + "'"));
  std::filesystem::remove_all(dir);

  // The same names as a state_dict (the Python package's path).
  std::vector<std::pair<std::string, Tensor>> sd;
  for (const WeightSpec& e : weight_specs(c, LayerType::csa))
    sd.emplace_back(e.name == scorer ? "compressor.indexer.weights_proj.weight" : e.name,
                    test::weight_named(w, e.name));
  EXPECT_EQ(layer_weights_from_named(sd, c, LayerType::csa).indexer->weights_proj.data, w.indexer->weights_proj.data);
}

}  // namespace
}  // namespace dsv4
