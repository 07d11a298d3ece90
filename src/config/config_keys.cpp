// Unknown and misspelled config keys. config_json.cpp reads a key where it
// needs it and falls back to a default when it is absent, so a misspelled
// optional key (`rms_:orm_eps`) would otherwise run with the default.
#include "config/config_keys.h"

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

#include "dsv4/error.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;
using Keys = std::span<const std::string_view>;

// What config_json.cpp reads, per object.
constexpr std::string_view kTopLevel[] = {"hidden_size",
                                          "num_attention_heads",
                                          "head_dim",
                                          "qk_rope_head_dim",
                                          "q_lora_rank",
                                          "o_groups",
                                          "o_lora_rank",
                                          "sliding_window",
                                          "index_n_heads",
                                          "index_head_dim",
                                          "index_topk",
                                          "rope_theta",
                                          "compress_rope_theta",
                                          "rms_norm_eps",
                                          "rope_scaling",
                                          "rope_parameters",
                                          "max_position_embeddings",
                                          "compress_rates",
                                          "compress_rate_csa",
                                          "compress_rate_hca",
                                          "num_hidden_layers",
                                          "layer_types",
                                          "compress_ratios"};
constexpr std::string_view kLayerSpec[] = {"layer_type"};  // layer_spec_from_json_text
constexpr std::string_view kRopeScaling[] = {"type",      "rope_type", "factor", "original_max_position_embeddings",
                                             "beta_fast", "beta_slow"};
constexpr std::string_view kRopeParameters[] = {"main", "compress"};
constexpr std::string_view kRopeMain[] = {"type", "rope_type", "rope_theta", "partial_rotary_factor"};
constexpr std::string_view kRopeCompress[] = {
    "type",      "rope_type", "rope_theta", "partial_rotary_factor", "factor", "original_max_position_embeddings",
    "beta_fast", "beta_slow"};
constexpr std::string_view kCompressRates[] = {"compressed_sparse_attention", "heavily_compressed_attention"};

// Keys of the full model's config.json (Hugging Face's and DeepSeek's
// spellings) that dsv4 does not read: accepted even when they are close to
// one it reads (v_head_dim / head_dim, n_group / o_groups, qk_nope_head_dim).
constexpr std::string_view kModelOther[] = {
    "architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "use_cache", "initializer_range",
    "hidden_act", "attention_bias", "attention_dropout", "vocab_size", "intermediate_size", "num_key_value_heads",
    "quantization_config", "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
    "routed_scaling_factor", "n_group", "topk_group", "topk_method", "scoring_func", "norm_topk_prob",
    "first_k_dense_replace", "moe_layer_freq", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim",
    "num_nextn_predict_layers", "ep_size", "aux_loss_alpha", "seq_aux", "rope_interleave", "hc_mult",
    "hc_sinkhorn_iters", "hc_eps", "swiglu_limit", "expert_dtype", "layer_type",
    // DeepSeek's inference config.json
    "dim", "n_layers", "n_dense_layers", "n_heads", "moe_inter_dim", "n_activated_experts", "n_expert_groups",
    "n_limited_groups", "route_scale", "score_func", "norm_eps", "rope_head_dim", "window_size", "original_seq_len",
    "rope_factor", "mscale", "max_batch_size", "max_seq_len"};
constexpr std::string_view kRopeOther[] = {"mscale", "mscale_all_dim", "attention_factor", "truncate"};
constexpr std::string_view kRatesOther[] = {"sliding_attention"};

bool has(Keys keys, std::string_view k) { return std::find(keys.begin(), keys.end(), k) != keys.end(); }

std::string normalized(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = ch == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

// The key k is probably a misspelling of (or "" if none).
std::string_view near_key(std::string_view k, std::initializer_list<Keys> known) {
  const std::string nk = normalized(k);
  std::string_view best;
  size_t best_d = 3;
  for (Keys keys : known)
    for (std::string_view key : keys) {
      const size_t d = edit_distance(nk, normalized(key)), limit = key.size() >= 10 ? 2 : 1;
      if (d <= limit && d < best_d) best = key, best_d = d;
    }
  return best;
}

std::string list(std::initializer_list<Keys> known) {
  std::vector<std::string_view> all;
  for (Keys keys : known) all.insert(all.end(), keys.begin(), keys.end());
  std::sort(all.begin(), all.end());
  std::string out;
  for (std::string_view k : all) out += (out.empty() ? "" : ", ") + std::string(k);
  return out;
}

// One object at `prefix` (e.g. "rope_scaling."): known = read keys, other = tolerated (lenient only).
void check_object(const json& obj, KeyCheck mode, const std::string& prefix, std::initializer_list<Keys> known,
                  Keys other) {
  if (!obj.is_object()) return;  // the parser reports the type
  for (const auto& [key, _] : obj.items()) {
    bool read = false;
    for (Keys keys : known) read = read || has(keys, key);
    if (read || (mode == KeyCheck::lenient && has(other, key))) continue;
    const std::string_view near = near_key(key, known);
    if (!near.empty())
      fail("unknown key '" + prefix + key + "': did you mean '" + prefix + std::string(near) + "'? (a misspelled key " +
           "would silently fall back to its default)");
    if (mode == KeyCheck::strict) fail("unknown key '" + prefix + key + "' (this config takes: " + list(known) + ")");
  }
}

const json* member(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  const auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

}  // namespace

size_t edit_distance(std::string_view a, std::string_view b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])  // two neighbours swapped
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

void check_config_keys(const json& j, KeyCheck mode) {
  if (mode == KeyCheck::strict)
    check_object(j, mode, "", {kTopLevel, kLayerSpec}, {});
  else
    check_object(j, mode, "", {kTopLevel}, kModelOther);
  if (const json* rs = member(j, "rope_scaling")) check_object(*rs, mode, "rope_scaling.", {kRopeScaling}, kRopeOther);
  if (const json* cr = member(j, "compress_rates"))
    check_object(*cr, mode, "compress_rates.", {kCompressRates}, kRatesOther);
  if (const json* rp = member(j, "rope_parameters")) {
    check_object(*rp, mode, "rope_parameters.", {kRopeParameters}, {});
    if (const json* m = member(*rp, "main")) check_object(*m, mode, "rope_parameters.main.", {kRopeMain}, kRopeOther);
    if (const json* c = member(*rp, "compress"))
      check_object(*c, mode, "rope_parameters.compress.", {kRopeCompress}, kRopeOther);
  }
}

}  // namespace dsv4
