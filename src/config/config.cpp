// Config presets, validation, digest and layer-type names.
#include "dsv4/config.h"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace dsv4 {

std::string_view layer_type_name(LayerType t) {
  switch (t) {
    case LayerType::sliding: return "sliding_attention";
    case LayerType::csa: return "compressed_sparse_attention";
    case LayerType::hca: return "heavily_compressed_attention";
  }
  fail("layer_type_name: invalid LayerType value " + std::to_string(static_cast<int>(t)));
}

LayerType parse_layer_type(std::string_view name) {
  if (name == "sliding_attention" || name == "swa" || name == "sliding") return LayerType::sliding;
  if (name == "compressed_sparse_attention" || name == "csa") return LayerType::csa;
  if (name == "heavily_compressed_attention" || name == "hca") return LayerType::hca;
  fail("unknown layer type '" + std::string(name) +
       "' (expected sliding_attention, compressed_sparse_attention, heavily_compressed_attention, "
       "or swa/sliding/csa/hca)");
}

std::string_view numerics_name(Numerics n) { return n == Numerics::deployment ? "deployment" : "reference"; }

Numerics parse_numerics(std::string_view name) {
  if (name == "reference") return Numerics::reference;
  if (name == "deployment") return Numerics::deployment;
  fail("unknown numerics '" + std::string(name) + "' (expected reference or deployment)");
}

namespace {

std::string num(double v) {
  std::ostringstream s;
  s.precision(17);  // round-trips a double, so the digest sees every bit
  s << v;
  return s.str();
}

void require_positive(const char* key, int64_t v) {
  if (v <= 0) fail(std::string("config: ") + key + " must be > 0 (got " + std::to_string(v) + ")");
}

void require_positive_finite(const char* key, double v) {
  if (!(std::isfinite(v) && v > 0))
    fail(std::string("config: ") + key + " must be finite and > 0 (got " + num(v) + ")");
}

}  // namespace

// rope_scaling.type: "yarn" (YaRN on CSA/HCA layers) or "" (no scaling: plain
// RoPE with compress_rope_theta). The YaRN fields are checked only for "yarn".
void Config::validate() const {
  const std::pair<const char*, int64_t> sizes[] = {{"hidden_size", hidden_size},
                                                   {"num_attention_heads", num_attention_heads},
                                                   {"head_dim", head_dim},
                                                   {"q_lora_rank", q_lora_rank},
                                                   {"o_groups", o_groups},
                                                   {"o_lora_rank", o_lora_rank},
                                                   {"sliding_window", sliding_window},
                                                   {"compress_rate_csa", compress_rate_csa},
                                                   {"compress_rate_hca", compress_rate_hca},
                                                   {"index_n_heads", index_n_heads},
                                                   {"index_head_dim", index_head_dim},
                                                   {"index_topk", index_topk},
                                                   {"qk_rope_head_dim", qk_rope_head_dim}};
  for (const auto& [key, v] : sizes) require_positive(key, v);

  const std::string R = std::to_string(qk_rope_head_dim);
  if (qk_rope_head_dim % 2 != 0) fail("config: qk_rope_head_dim must be even (got " + R + ")");
  if (qk_rope_head_dim > head_dim)
    fail("config: qk_rope_head_dim (" + R + ") > head_dim (" + std::to_string(head_dim) + ")");
  if (qk_rope_head_dim > index_head_dim)
    fail("config: index_head_dim < rope dim: index_head_dim = " + std::to_string(index_head_dim) +
         ", qk_rope_head_dim = " + R);
  // Overflow-safe: both factors are positive and far below 2^31 in any real model.
  if ((num_attention_heads * head_dim) % o_groups != 0)
    fail("config: o_groups (" + std::to_string(o_groups) + ") does not divide num_attention_heads*head_dim (" +
         std::to_string(num_attention_heads * head_dim) + ")");

  require_positive_finite("rope_theta", rope_theta);
  require_positive_finite("compress_rope_theta", compress_rope_theta);
  require_positive_finite("rms_norm_eps", rms_norm_eps);

  const RopeScaling& rs = rope_scaling;
  if (rs.type.empty()) return;
  if (rs.type != "yarn") fail("config: rope_scaling.type must be \"yarn\" or empty for none (got \"" + rs.type + "\")");
  if (!(std::isfinite(rs.factor) && rs.factor >= 1))
    fail("config: rope_scaling.factor must be finite and >= 1 (got " + num(rs.factor) + ")");
  require_positive("rope_scaling.original_max_position_embeddings", rs.original_max_position_embeddings);
  require_positive_finite("rope_scaling.beta_fast", rs.beta_fast);
  require_positive_finite("rope_scaling.beta_slow", rs.beta_slow);
  if (rs.beta_fast <= rs.beta_slow)
    fail("config: rope_scaling.beta_fast (" + num(rs.beta_fast) + ") must be > rope_scaling.beta_slow (" +
         num(rs.beta_slow) + ")");
}

int64_t Config::compress_rate(LayerType t) const {
  switch (t) {
    case LayerType::sliding: return 0;
    case LayerType::csa: return compress_rate_csa;
    case LayerType::hca: return compress_rate_hca;
  }
  fail("compress_rate: invalid LayerType value " + std::to_string(static_cast<int>(t)));
}

// 64-bit FNV-1a over a canonical "key=value;" text of every hyper-parameter
// (layer_types excluded: a layer's state depends only on its own type).
std::string Config::fingerprint() const {
  std::ostringstream t;
  t << "d=" << hidden_size << ";H=" << num_attention_heads << ";D=" << head_dim << ";R=" << qk_rope_head_dim
    << ";rq=" << q_lora_rank << ";g=" << o_groups << ";dg=" << o_lora_rank << ";W=" << sliding_window
    << ";m=" << compress_rate_csa << ";mh=" << compress_rate_hca << ";HI=" << index_n_heads << ";DI=" << index_head_dim
    << ";k=" << index_topk << ";theta=" << num(rope_theta) << ";theta_c=" << num(compress_rope_theta)
    << ";rs.type=" << rope_scaling.type << ";rs.factor=" << num(rope_scaling.factor)
    << ";rs.L0=" << rope_scaling.original_max_position_embeddings << ";rs.bf=" << num(rope_scaling.beta_fast)
    << ";rs.bs=" << num(rope_scaling.beta_slow) << ";eps=" << num(rms_norm_eps) << ";";
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : t.str()) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

Config Config::preset(std::string_view name) {
  const bool pro = name == "v4-pro";
  if (!pro && name != "v4-flash") fail("unknown config preset '" + std::string(name) + "' (known: v4-flash, v4-pro)");
  // Set every field explicitly so the presets do not hinge on the header's defaults.
  Config c;
  c.hidden_size = pro ? 7168 : 4096;
  c.num_attention_heads = pro ? 128 : 64;
  c.head_dim = 512;
  c.qk_rope_head_dim = 64;
  c.q_lora_rank = pro ? 1536 : 1024;
  c.o_groups = pro ? 16 : 8;
  c.o_lora_rank = 1024;
  c.sliding_window = 128;
  c.compress_rate_csa = 4;
  c.compress_rate_hca = 128;
  c.index_n_heads = 64;
  c.index_head_dim = 128;
  c.index_topk = pro ? 1024 : 512;
  c.rope_theta = 10000.0;
  c.compress_rope_theta = 160000.0;
  c.rope_scaling = RopeScaling{"yarn", 16.0, 65536, 32.0, 1.0};
  c.rms_norm_eps = 1e-6;
  // Flash: 2 sliding + 41 alternating (43); Pro: 2 HCA + 59 alternating (61).
  c.layer_types.assign(2, pro ? LayerType::hca : LayerType::sliding);
  for (int i = 0; i < (pro ? 59 : 41); ++i) c.layer_types.push_back(i % 2 == 0 ? LayerType::csa : LayerType::hca);
  return c;
}

}  // namespace dsv4
