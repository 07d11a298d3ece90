// Hyper-parameters of one DeepSeek-V4 attention layer (and the per-layer type
// list of a whole model). Plain struct; names follow the spec table.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "dsv4/error.h"

namespace dsv4 {

enum class LayerType { sliding, csa, hca };

// "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention".
std::string_view layer_type_name(LayerType t);
// Accepts the long names above and the short "swa" / "csa" / "hca".
LayerType parse_layer_type(std::string_view name);

// Where a layer rounds (docs/numerics.md). reference: the fp32 math of the
// PyTorch reference. deployment: the served model's roundings (FP8 E4M3 window
// rows and compressed entries, Hadamard + FP4 E2M1 indexer keys and queries),
// and a decode state that stores rows in those formats.
enum class Numerics { reference, deployment };
std::string_view numerics_name(Numerics n);  // "reference", "deployment"
Numerics parse_numerics(std::string_view name);

struct RopeScaling {
  std::string type = "yarn";
  double factor = 16.0;
  int64_t original_max_position_embeddings = 65536;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

struct Config {
  int64_t hidden_size = 4096;           // d
  int64_t num_attention_heads = 64;     // H
  int64_t head_dim = 512;               // D
  int64_t qk_rope_head_dim = 64;        // R
  int64_t q_lora_rank = 1024;           // r_q
  int64_t o_groups = 8;                 // g
  int64_t o_lora_rank = 1024;           // d_g
  int64_t sliding_window = 128;         // W
  int64_t compress_rate_csa = 4;        // m
  int64_t compress_rate_hca = 128;      // m'
  int64_t index_n_heads = 64;           // H_I
  int64_t index_head_dim = 128;         // D_I
  int64_t index_topk = 512;             // k
  double rope_theta = 10000.0;          // θ   (sliding layers, plain RoPE)
  double compress_rope_theta = 160000;  // θ_c (CSA/HCA layers, YaRN)
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;
  // Per-layer types of a whole model (empty for a single-layer config).
  std::vector<LayerType> layer_types;

  // Throws dsv4::Error naming the offending key.
  void validate() const;
  // Compress rate r of a layer type (0 for sliding).
  int64_t compress_rate(LayerType t) const;
  // Short digest of every numeric field (used to tag saved states).
  std::string fingerprint() const;

  // Named presets: "v4-flash", "v4-pro".
  static Config preset(std::string_view name);
};

// A config plus the type of the one layer it describes (conformance files).
struct LayerSpec {
  Config config;
  LayerType type = LayerType::sliding;
};

// Parse a JSON text. Accepts the conformance `config` metadata (with
// `layer_type`, `compress_rate_csa/hca`) and a Hugging Face `config.json`
// (`layer_types` + `compress_rates`, or DeepSeek's `compress_ratios`).
// `where` names the source in error messages.
Config config_from_json_text(std::string_view text, const std::string& where);
Config config_from_file(const std::filesystem::path& path);
// For a single-layer JSON with `layer_type` (conformance files).
LayerSpec layer_spec_from_json_text(std::string_view text, const std::string& where);

// Config -> a model's config.json text that config_from_json_text reads back
// as the same Config: the sizes, RoPE (rope_scaling null when unscaled), the
// norm's epsilon and the layer list, as Hugging Face writes it (`layer_types`)
// or with `compress_ratios` as DeepSeek's releases do. indent < 0: one line.
std::string config_to_json_text(const Config& c, bool compress_ratios = false, int indent = -1);

}  // namespace dsv4
