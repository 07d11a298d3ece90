// Unknown and misspelled config keys (src/config/config_keys.h): a layer's
// config (conformance metadata) refuses any key the parser does not read; a
// model's config.json accepts the full model's keys but refuses a likely typo
// of one dsv4 reads, which would otherwise silently fall back to its default.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "config/config_keys.h"
#include "dsv4/config.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

json small_json() {  // the conformance "small" CSA config, as the files store it
  return json::parse(R"({"compress_rate_csa": 4, "compress_rate_hca": 8, "compress_rope_theta": 160000.0,
    "head_dim": 32, "hidden_size": 64, "index_head_dim": 16, "index_n_heads": 4, "index_topk": 3,
    "layer_type": "compressed_sparse_attention", "max_position_embeddings": 1024, "num_attention_heads": 4,
    "o_groups": 2, "o_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 16.0, "original_max_position_embeddings": 64,
    "type": "yarn"}, "rope_theta": 10000.0, "sliding_window": 8})");
}

json model_json() {  // a model's config.json: the layer keys plus the rest of the model's
  json j = small_json();
  j.erase("layer_type");
  j["layer_types"] = {"sliding_attention", "compressed_sparse_attention"};
  for (const char* k : {"vocab_size", "qk_nope_head_dim", "v_head_dim", "kv_lora_rank", "n_group", "topk_group",
                        "num_key_value_heads", "n_routed_experts", "hc_mult", "num_nextn_predict_layers"})
    j[k] = 1;
  j["model_type"] = "deepseek_v4";
  j["architectures"] = {"DeepseekV4ForCausalLM"};
  j["rope_scaling"]["mscale"] = 1.0;
  j["an_unrelated_future_key"] = true;  // far from every key dsv4 reads: accepted
  return j;
}

std::string spec_error(const json& j) {
  try {
    layer_spec_from_json_text(j.dump(), "case.safetensors metadata 'config'");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

std::string model_error(const json& j) {
  try {
    config_from_json_text(j.dump(), "model/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(ConfigKeys, EditDistance) {
  EXPECT_EQ(edit_distance("rms_norm_eps", "rms_norm_eps"), 0u);
  EXPECT_EQ(edit_distance("rms_:orm_eps", "rms_norm_eps"), 1u);
  EXPECT_EQ(edit_distance("rms_nrom_eps", "rms_norm_eps"), 1u);  // two neighbours swapped
  EXPECT_EQ(edit_distance("rope_theta", "rope_thetas"), 1u);
  EXPECT_EQ(edit_distance("head_dim", "v_head_dim"), 2u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
}

TEST(ConfigKeys, LayerConfigRefusesEveryUnknownKey) {
  EXPECT_EQ(spec_error(small_json()), "(accepted)");
  json j = small_json();
  j["rms_:orm_eps"] = j["rms_norm_eps"];
  j.erase("rms_norm_eps");
  EXPECT_EQ(spec_error(j),
            "case.safetensors metadata 'config': unknown key 'rms_:orm_eps': did you mean "
            "'rms_norm_eps'? (a misspelled key would silently fall back to its default)");
  j = small_json();
  j["comment"] = "made by hand";
  EXPECT_THAT(spec_error(j), HasSubstr("unknown key 'comment' (this config takes: compress_rate_csa, "));
  j = small_json();
  j["rope_scaling"]["mscale"] = 1.0;  // a full model's key, not a layer config's
  EXPECT_THAT(spec_error(j), HasSubstr("unknown key 'rope_scaling.mscale' (this config takes: beta_fast, "));
  j = small_json();
  j["Rope_Theta"] = 10000.0;  // case and '-' vs '_' count as typos
  j.erase("rope_theta");
  EXPECT_THAT(spec_error(j), HasSubstr("unknown key 'Rope_Theta': did you mean 'rope_theta'?"));
}

TEST(ConfigKeys, ModelConfigAcceptsTheFullModelsKeys) {
  const Config c = config_from_json_text(model_json().dump(), "config.json");
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  json j = model_json();
  j["layer_type"] = "compressed_sparse_attention";  // a single layer's key (Config.from_json reads those files too)
  EXPECT_EQ(model_error(j), "(accepted)");
}

TEST(ConfigKeys, ModelConfigRefusesLikelyTypos) {
  const std::pair<const char*, const char*> typos[] = {{"rms_norm_epsilon", ""},  // distance 4: not a typo, accepted
                                                       {"rms_norm_epss", "rms_norm_eps"},
                                                       {"compress_rope_thetta", "compress_rope_theta"},
                                                       {"rope_thet", "rope_theta"},
                                                       {"max_position_embedding", "max_position_embeddings"},
                                                       {"compress_rate_hac", "compress_rate_hca"},
                                                       {"index_top_k", "index_topk"}};
  for (const auto& [typo, meant] : typos) {
    json j = model_json();
    j[typo] = 1;
    if (*meant)
      EXPECT_EQ(model_error(j), std::string("model/config.json: unknown key '") + typo + "': did you mean '" + meant +
                                    "'? (a misspelled key would silently fall back to its default)");
    else
      EXPECT_EQ(model_error(j), "(accepted)") << typo;
  }
  json j = model_json();
  j["rope_scaling"]["factr"] = 16.0;
  EXPECT_THAT(model_error(j), HasSubstr("unknown key 'rope_scaling.factr': did you mean 'rope_scaling.factor'?"));
  j = model_json();
  j["compress_rates"] = {{"compressed_sparse_atention", 4}};
  EXPECT_THAT(model_error(j), HasSubstr("did you mean 'compress_rates.compressed_sparse_attention'?"));
}

}  // namespace
}  // namespace dsv4
