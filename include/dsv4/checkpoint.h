// A DeepSeek-V4 checkpoint folder: `config.json` plus either
// `model.safetensors.index.json` and its shards or one `model.safetensors`.
// Shards are memory-mapped; only the attention tensors of a requested layer
// are read: converted to fp32 (BF16/F16 exactly, FP8 E4M3 times its
// per-128x128-block scale), or kept as stored (WeightFormat::native: the
// projection matrices in LayerWeights::stored). Model (dsv4/model.h) is this
// reader handing out Layers.
//
// Two naming schemes, detected from the tensor names:
//   hugging_face: model.layers.{i}.self_attn.q_a_proj.weight   (+ .weight_scale_inv)
//   deepseek:     layers.{i}.attn.wq_a.weight                   (+ wq_a.scale)
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "dsv4/config.h"
#include "dsv4/safetensors.h"
#include "dsv4/weights.h"

namespace dsv4 {

enum class NamingScheme { hugging_face, deepseek };
std::string_view naming_scheme_name(NamingScheme s);  // "hugging_face", "deepseek"

// Checkpoint name of layer i's tensor `hf_name` (a name of the spec, relative
// to `self_attn.`, e.g. "compressor.indexer.q_b_proj.weight"); throws for an
// unknown name. scale_name: the FP8 scale tensor of a checkpoint weight name.
std::string checkpoint_name(NamingScheme s, int64_t layer, std::string_view hf_name);
std::string scale_name(NamingScheme s, const std::string& weight_name);

struct TensorSummary {
  std::string name;  // full checkpoint name
  DType dtype = DType::F32;
  Shape shape;
  uint64_t bytes = 0;  // as stored
  std::string shard;   // file name inside the model folder
};

class Checkpoint {
 public:
  // Reads config.json and every shard header; checks the index against the
  // shards. Errors name the folder, file and tensor.
  static Checkpoint open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const Config& config() const { return config_; }
  NamingScheme scheme() const { return scheme_; }
  int64_t num_layers() const { return static_cast<int64_t>(config_.layer_types.size()); }
  LayerType layer_type(int64_t i) const;
  size_t num_shards() const { return shards_.size(); }

  // Every stored tensor under layer i's attention prefix (scales and
  // unexpected ones included), sorted by name.
  std::vector<TensorSummary> layer_tensors(int64_t i) const;
  // Tensors outside every layer's attention prefix (experts, norms,
  // hyper-connections, embeddings, ...) by dtype: skipped, never read.
  std::map<std::string, int64_t> other_tensors() const;
  // What stops layer i from loading: missing, unexpected or duplicated
  // tensors, wrong shapes, dtypes or scale grids (one line each, naming the
  // file and tensor). Empty when it loads (non-finite values aside).
  std::vector<std::string> layer_problems(int64_t i) const;
  // Bytes layer i's weights would take in memory in a format (what
  // Layer::weight_bytes() reports once built); throws like load_layer.
  size_t layer_bytes(int64_t i, WeightFormat format) const;
  // Layer i's weights in fp32 (native: the projection matrices as stored, in
  // LayerWeights::stored); throws with every problem listed, or naming a
  // tensor with non-finite values and their count.
  LayerWeights load_layer(int64_t i, WeightFormat format = WeightFormat::f32) const;

 private:
  struct Planned;
  std::vector<Planned> plan(int64_t i, std::vector<std::string>& problems) const;
  std::string prefix(int64_t i) const;

  std::filesystem::path dir_;
  Config config_;
  NamingScheme scheme_ = NamingScheme::hugging_face;
  std::vector<SafeTensors> shards_;
  std::vector<std::string> shard_names_;           // file names, parallel to shards_
  std::map<std::string, std::vector<int>> where_;  // tensor -> shards holding it
};

}  // namespace dsv4
