// JSON -> Config: the conformance `config` metadata and Hugging Face /
// DeepSeek config.json files.
//
// Required: every size key (hidden_size ... index_topk). Optional, with
// defaults: rope_theta 10000, compress_rope_theta 160000, rms_norm_eps 1e-6,
// compress_rate_csa/hca (or `compress_rates`) 4 / 128, rope_scaling (absent or
// null: no scaling, i.e. type "" = plain RoPE with compress_rope_theta on
// CSA/HCA layers; `rope_type` is an alias of `type`, and "default"/"none" also
// mean no scaling). A null value counts as absent. Unknown keys: config_keys.h
// (a layer's config refuses them; a model's config.json refuses only likely typos).
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "config/config_keys.h"
#include "dsv4/config.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;

// Errors below omit `where`; the public entry points prefix it.
const json* find(const json& obj, const std::string& key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

// A non-negative integer; integral floats (e.g. 4.0) are accepted.
int64_t as_int(const json& v, const std::string& key) {
  if (v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max()))
    return static_cast<int64_t>(v.get<uint64_t>());
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d >= 0 && d < 9.2e18 && d == std::floor(d)) return static_cast<int64_t>(d);
  }
  fail("key '" + key + "' must be a non-negative integer (got " + v.dump() + ")");
}

double as_double(const json& v, const std::string& key) {
  if (!v.is_number()) fail("key '" + key + "' must be a number (got " + v.dump() + ")");
  return v.get<double>();
}

std::string as_string(const json& v, const std::string& key) {
  if (!v.is_string()) fail("key '" + key + "' must be a string (got " + v.dump() + ")");
  return v.get<std::string>();
}

int64_t req_int(const json& obj, const std::string& key, const std::string& prefix = "") {
  const json* v = find(obj, key);
  if (!v) fail("missing required key '" + prefix + key + "'");
  return as_int(*v, prefix + key);
}

template <class T, class F>
T opt(const json& obj, const std::string& key, T dflt, F conv, const std::string& prefix = "") {
  const json* v = find(obj, key);
  return v ? conv(*v, prefix + key) : dflt;
}

RopeScaling parse_rope_scaling(const json* rs, int64_t max_pos) {
  RopeScaling out;
  if (!rs) {
    out.type = "";
    return out;
  }
  if (!rs->is_object()) fail("key 'rope_scaling' must be an object (got " + rs->dump() + ")");
  const std::string p = "rope_scaling.";
  const json* t = find(*rs, "type");
  const json* rt = find(*rs, "rope_type");
  if (t && rt && *t != *rt)
    fail("rope_scaling.type (" + t->dump() + ") and rope_scaling.rope_type (" + rt->dump() + ") disagree");
  out.type = (t || rt) ? as_string(t ? *t : *rt, p + (t ? "type" : "rope_type")) : "";
  if (out.type == "default" || out.type == "none") out.type = "";
  if (out.type != "yarn") return out;  // validate() rejects anything but "" and "yarn"

  const json* f = find(*rs, "factor");
  if (!f) fail("missing required key 'rope_scaling.factor'");
  out.factor = as_double(*f, p + "factor");
  // As in transformers: L0 falls back to max_position_embeddings.
  const json* l0 = find(*rs, "original_max_position_embeddings");
  if (l0)
    out.original_max_position_embeddings = as_int(*l0, p + "original_max_position_embeddings");
  else if (max_pos > 0)
    out.original_max_position_embeddings = max_pos;
  else
    fail("missing required key 'rope_scaling.original_max_position_embeddings'");
  out.beta_fast = opt(*rs, "beta_fast", 32.0, as_double, p);
  out.beta_slow = opt(*rs, "beta_slow", 1.0, as_double, p);
  return out;
}

// One compress rate from the top-level key and/or `compress_rates`, which must agree.
std::optional<int64_t> rate(const json& j, const json* rates, const char* key, const char* long_name) {
  std::optional<int64_t> a, b;
  if (const json* v = find(j, key)) a = as_int(*v, key);
  if (rates)
    if (const json* v = find(*rates, long_name)) b = as_int(*v, std::string("compress_rates.") + long_name);
  if (a && b && *a != *b)
    fail(std::string(key) + " (" + std::to_string(*a) + ") and compress_rates." + long_name + " (" +
         std::to_string(*b) + ") disagree");
  return a ? a : b;
}

void parse_layers(const json& j, Config& c) {
  const json* rates = find(j, "compress_rates");
  if (rates && !rates->is_object()) fail("key 'compress_rates' must be an object (got " + rates->dump() + ")");
  const auto m = rate(j, rates, "compress_rate_csa", "compressed_sparse_attention");
  const auto mh = rate(j, rates, "compress_rate_hca", "heavily_compressed_attention");
  c.compress_rate_csa = m.value_or(4);
  c.compress_rate_hca = mh.value_or(128);

  const int64_t n = opt(j, "num_hidden_layers", int64_t(-1), as_int);  // -1: absent

  const json* lt = find(j, "layer_types");
  if (lt) {
    if (!lt->is_array()) fail("key 'layer_types' must be a list of strings (got " + lt->dump() + ")");
    for (size_t i = 0; i < lt->size(); ++i) {
      const std::string key = "layer_types[" + std::to_string(i) + "]";
      const std::string name = as_string((*lt)[i], key);
      try {
        c.layer_types.push_back(parse_layer_type(name));
      } catch (const Error& e) {
        fail(key + ": " + e.what());
      }
    }
    if (n >= 0 && n != int64_t(lt->size()))
      fail("num_hidden_layers (" + std::to_string(n) + ") != length of layer_types (" + std::to_string(lt->size()) +
           ")");
  }

  const json* cr = find(j, "compress_ratios");
  if (!cr) return;
  if (!cr->is_array()) fail("key 'compress_ratios' must be a list of integers (got " + cr->dump() + ")");
  // Entries beyond num_hidden_layers belong to the MTP layer(s).
  const size_t count = n >= 0 ? size_t(n) : cr->size();
  if (cr->size() < count)
    fail("compress_ratios has " + std::to_string(cr->size()) + " entries, fewer than num_hidden_layers (" +
         std::to_string(count) + ")");
  std::vector<LayerType> types;
  std::optional<int64_t> hca_rate;
  for (size_t i = 0; i < count; ++i) {
    const std::string key = "compress_ratios[" + std::to_string(i) + "]";
    const int64_t r = as_int((*cr)[i], key);
    if (r == 0) {
      types.push_back(LayerType::sliding);
    } else if (r == c.compress_rate_csa) {
      types.push_back(LayerType::csa);
    } else {
      if (hca_rate && *hca_rate != r)
        fail(key + " = " + std::to_string(r) + ": HCA layers have different rates (" + std::to_string(*hca_rate) +
             " and " + std::to_string(r) + "); one compress_rate_hca is supported");
      hca_rate = r;
      types.push_back(LayerType::hca);
    }
  }
  if (hca_rate) {
    if (mh && *mh != *hca_rate)
      fail("compress_ratios HCA rate " + std::to_string(*hca_rate) + " != compress_rate_hca " + std::to_string(*mh));
    c.compress_rate_hca = *hca_rate;
  }
  if (lt && types != c.layer_types) {
    size_t i = 0;
    while (i < types.size() && i < c.layer_types.size() && types[i] == c.layer_types[i]) ++i;
    fail("layer_types and compress_ratios disagree (first at layer " + std::to_string(i) + ")");
  }
  c.layer_types = std::move(types);
}

// transformers' `rope_parameters` {"main": {...}, "compress": {...}}: RoPE theta
// and partial_rotary_factor of the sliding layers (main) and of the CSA/HCA
// layers (compress, which carries the YaRN keys). R = partial_rotary_factor · D.
double req_double(const json& obj, const std::string& key, const std::string& prefix) {
  const json* v = find(obj, key);
  if (!v) fail("missing required key '" + prefix + key + "'");
  return as_double(*v, prefix + key);
}

void parse_rope_parameters(const json& rp, int64_t max_pos, Config& c) {
  if (!rp.is_object()) fail("key 'rope_parameters' must be an object (got " + rp.dump() + ")");
  const json* main = find(rp, "main");
  const json* comp = find(rp, "compress");
  if (!main || !comp) fail("rope_parameters: needs both 'main' and 'compress' entries");
  for (const auto& [name, e] : {std::pair{"main", main}, std::pair{"compress", comp}})
    if (!e->is_object()) fail(std::string("rope_parameters.") + name + " must be an object");
  c.rope_theta = req_double(*main, "rope_theta", "rope_parameters.main.");
  c.compress_rope_theta = req_double(*comp, "rope_theta", "rope_parameters.compress.");
  const json* mt = find(*main, "rope_type") ? find(*main, "rope_type") : find(*main, "type");
  const std::string main_type = mt ? as_string(*mt, "rope_parameters.main.rope_type") : "default";
  if (main_type != "default" && main_type != "none")
    fail("rope_parameters.main: rope_type '" + main_type + "' (the sliding layers use plain RoPE)");
  c.rope_scaling = parse_rope_scaling(comp, max_pos);
  double factor = 0;
  for (const auto& [name, e] : {std::pair{"main", main}, std::pair{"compress", comp}}) {
    const std::string key = std::string("rope_parameters.") + name + ".partial_rotary_factor";
    const json* f = find(*e, "partial_rotary_factor");
    if (!f) continue;
    const double v = as_double(*f, key);
    if (factor != 0 && v != factor) fail(key + " (" + f->dump() + ") differs from the other entry's");
    factor = v;
  }
  if (factor == 0) return;  // qk_rope_head_dim must then be given
  const double r = factor * static_cast<double>(c.head_dim);
  if (r != std::floor(r) || r <= 0)
    fail("rope_parameters: partial_rotary_factor " + json(factor).dump() + " x head_dim " + std::to_string(c.head_dim) +
         " is not a whole number of dims");
  c.qk_rope_head_dim = static_cast<int64_t>(r);
}

Config config_from_json(const json& j, KeyCheck keys) {
  if (!j.is_object()) fail("config JSON must be an object");
  check_config_keys(j, keys);
  Config c;
  c.hidden_size = req_int(j, "hidden_size");
  c.num_attention_heads = req_int(j, "num_attention_heads");
  c.head_dim = req_int(j, "head_dim");
  const json* rp = find(j, "rope_parameters");
  c.qk_rope_head_dim = rp && !find(j, "qk_rope_head_dim") ? 0 : req_int(j, "qk_rope_head_dim");
  c.q_lora_rank = req_int(j, "q_lora_rank");
  c.o_groups = req_int(j, "o_groups");
  c.o_lora_rank = req_int(j, "o_lora_rank");
  c.sliding_window = req_int(j, "sliding_window");
  c.index_n_heads = req_int(j, "index_n_heads");
  c.index_head_dim = req_int(j, "index_head_dim");
  c.index_topk = req_int(j, "index_topk");
  c.rope_theta = opt(j, "rope_theta", 10000.0, as_double);
  c.compress_rope_theta = opt(j, "compress_rope_theta", 160000.0, as_double);
  c.rms_norm_eps = opt(j, "rms_norm_eps", 1e-6, as_double);
  if (rp && find(j, "rope_scaling")) fail("config has both 'rope_parameters' and 'rope_scaling'");
  c.rope_scaling = parse_rope_scaling(find(j, "rope_scaling"), opt(j, "max_position_embeddings", int64_t(0), as_int));
  if (rp) {
    const int64_t given = c.qk_rope_head_dim;
    parse_rope_parameters(*rp, opt(j, "max_position_embeddings", int64_t(0), as_int), c);
    if (given && c.qk_rope_head_dim != given)
      fail("qk_rope_head_dim (" + std::to_string(given) + ") and rope_parameters' partial_rotary_factor (" +
           std::to_string(c.qk_rope_head_dim) + " dims) disagree");
    if (!c.qk_rope_head_dim) fail("rope_parameters: no partial_rotary_factor and no qk_rope_head_dim");
  }
  parse_layers(j, c);
  c.validate();
  return c;
}

json parse(std::string_view text) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail(std::string("invalid JSON: ") + e.what());
  }
}

// Runs f, prefixing any error with `where` (the one place that adds it).
template <class F>
auto with_where(const std::string& where, F f) {
  try {
    return f();
  } catch (const Error& e) {
    fail(where + ": " + e.what());
  } catch (const json::exception& e) {  // should not happen: types are checked first
    fail(where + ": " + e.what());
  }
}

}  // namespace

Config config_from_json_text(std::string_view text, const std::string& where) {
  return with_where(where, [&] { return config_from_json(parse(text), KeyCheck::lenient); });
}

LayerSpec layer_spec_from_json_text(std::string_view text, const std::string& where) {
  return with_where(where, [&] {
    const json j = parse(text);
    LayerSpec s{config_from_json(j, KeyCheck::strict)};
    const json* t = find(j, "layer_type");
    if (!t) fail("missing required key 'layer_type'");
    const std::string name = as_string(*t, "layer_type");
    try {
      s.type = parse_layer_type(name);
    } catch (const Error& e) {
      fail(std::string("layer_type: ") + e.what());
    }
    return s;
  });
}

Config config_from_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open config file '" + path.string() + "'");
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) fail("cannot read config file '" + path.string() + "'");
  return config_from_json_text(s.str(), path.string());
}

std::string config_to_json_text(const Config& c, bool compress_ratios, int indent) {
  nlohmann::ordered_json j;  // keys in the order a reader expects them
  j["model_type"] = "deepseek_v4";
  for (const auto& [k, v] : {std::pair<const char*, int64_t>{"hidden_size", c.hidden_size},
                             {"num_attention_heads", c.num_attention_heads},
                             {"head_dim", c.head_dim},
                             {"qk_rope_head_dim", c.qk_rope_head_dim},
                             {"q_lora_rank", c.q_lora_rank},
                             {"o_groups", c.o_groups},
                             {"o_lora_rank", c.o_lora_rank},
                             {"sliding_window", c.sliding_window},
                             {"compress_rate_csa", c.compress_rate_csa},
                             {"compress_rate_hca", c.compress_rate_hca},
                             {"index_n_heads", c.index_n_heads},
                             {"index_head_dim", c.index_head_dim},
                             {"index_topk", c.index_topk}})
    j[k] = v;
  j["rope_theta"] = c.rope_theta;
  j["compress_rope_theta"] = c.compress_rope_theta;
  j["rms_norm_eps"] = c.rms_norm_eps;
  const RopeScaling& r = c.rope_scaling;
  j["rope_scaling"] = nullptr;
  if (!r.type.empty())
    j["rope_scaling"] = {{"type", r.type},
                         {"factor", r.factor},
                         {"original_max_position_embeddings", r.original_max_position_embeddings},
                         {"beta_fast", r.beta_fast},
                         {"beta_slow", r.beta_slow}};
  j["num_hidden_layers"] = c.layer_types.size();
  const char* list = compress_ratios ? "compress_ratios" : "layer_types";
  j[list] = nlohmann::ordered_json::array();
  for (LayerType t : c.layer_types) {
    if (compress_ratios)
      j[list].push_back(c.compress_rate(t));
    else
      j[list].push_back(layer_type_name(t));
  }
  return j.dump(indent);
}

}  // namespace dsv4
