// Checkpoint folders: index + shards, the two naming schemes, per-layer
// tensor checks and loading (with FP8 block scales).
#include "dsv4/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "common/dtype.h"
#include "dsv4/error.h"
#include "io/stored_weights.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;

std::string_view stored(NamingScheme s, const WeightEntry& e) {
  return s == NamingScheme::hugging_face ? e.name : e.deepseek;
}

// The table entry of a stored suffix (after the layer's prefix), or null.
const WeightEntry* entry_of(NamingScheme s, std::string_view suffix) {
  for (const WeightEntry& e : kWeightTable)
    if (stored(s, e) == suffix) return &e;
  return nullptr;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail(p.string() + ": cannot open");
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) fail(p.string() + ": cannot read");
  return s.str();
}

// hugging_face if names start with "model.layers.", deepseek if "layers.".
NamingScheme detect_scheme(const std::map<std::string, std::vector<int>>& names, const std::string& where) {
  std::string hf, ds;
  for (const auto& [n, _] : names) {
    if (hf.empty() && n.starts_with("model.layers.")) hf = n;
    if (ds.empty() && n.starts_with("layers.")) ds = n;
  }
  if (!hf.empty() && !ds.empty())
    fail(where + ": mixes naming schemes: " + quote(hf) + " (Hugging Face) and " + quote(ds) + " (DeepSeek)");
  if (hf.empty() && ds.empty())
    fail(where + ": no layer tensors (expected names 'model.layers.N.self_attn.*' or 'layers.N.attn.*')");
  return hf.empty() ? NamingScheme::deepseek : NamingScheme::hugging_face;
}

}  // namespace

std::string_view naming_scheme_name(NamingScheme s) {
  return s == NamingScheme::hugging_face ? "hugging_face" : "deepseek";
}

std::string checkpoint_name(NamingScheme s, int64_t layer, std::string_view hf_name) {
  const std::string pre = s == NamingScheme::hugging_face ? "model.layers." + std::to_string(layer) + ".self_attn."
                                                          : "layers." + std::to_string(layer) + ".attn.";
  for (const WeightEntry& e : kWeightTable)
    if (e.name == hf_name) return pre + std::string(stored(s, e));
  fail("checkpoint_name: unknown attention tensor name " + quote(std::string(hf_name)));
}

std::string scale_name(NamingScheme s, const std::string& w) {
  if (s == NamingScheme::hugging_face) return w + "_scale_inv";  // x.weight -> x.weight_scale_inv
  const std::string_view suffix = ".weight";                     // x.weight -> x.scale
  return (w.ends_with(suffix) ? w.substr(0, w.size() - suffix.size()) : w) + ".scale";
}

// One weight of a layer as found in the checkpoint.
struct Checkpoint::Planned {
  WeightId id;
  std::string hf;    // spec name
  std::string name;  // checkpoint name
  int shard = -1;
  std::string scale;  // checkpoint name of its FP8 scale ("" if none)
  int scale_shard = -1;
};

Checkpoint Checkpoint::open(const fs::path& dir) {
  Checkpoint m;
  m.dir_ = dir;
  const std::string where = dir.string();
  if (!fs::is_directory(dir)) fail(where + ": not a directory");
  m.config_ = config_from_file(dir / "config.json");
  if (m.config_.layer_types.empty())
    fail((dir / "config.json").string() + ": no per-layer types ('layer_types' or 'compress_ratios')");

  const fs::path index = dir / "model.safetensors.index.json", single = dir / "model.safetensors";
  if (fs::exists(index)) {
    const auto map = parse_safetensors_index(read_text(index), index.string());
    std::map<std::string, std::vector<std::string>> by_shard;  // shard -> its tensors per the index
    for (const auto& [name, shard] : map) by_shard[shard].push_back(name);
    for (const auto& [shard, names] : by_shard) {
      if (!fs::is_regular_file(dir / shard))
        fail(index.string() + ": shard " + quote(shard) + " (tensor " + quote(names.front()) +
             (names.size() > 1 ? " and " + std::to_string(names.size() - 1) + " more" : "") + ") not found in " +
             where);
      m.shards_.push_back(SafeTensors::open(dir / shard));
      m.shard_names_.push_back(shard);
      for (const std::string& n : names)
        if (!m.shards_.back().contains(n))
          fail(index.string() + ": maps tensor " + quote(n) + " to " + (dir / shard).string() +
               ", which has no such tensor");
    }
  } else if (fs::exists(single)) {
    m.shards_.push_back(SafeTensors::open(single));
    m.shard_names_.push_back("model.safetensors");
  } else {
    fail(where + ": neither model.safetensors.index.json nor model.safetensors found");
  }
  for (size_t k = 0; k < m.shards_.size(); ++k)
    for (const std::string& n : m.shards_[k].names()) m.where_[n].push_back(int(k));
  m.scheme_ = detect_scheme(m.where_, where);
  return m;
}

LayerType Checkpoint::layer_type(int64_t i) const {
  if (i < 0 || i >= num_layers())
    fail(dir_.string() + ": layer " + std::to_string(i) + " out of range (the model has " +
         std::to_string(num_layers()) + " layers)");
  return config_.layer_types[size_t(i)];
}

std::string Checkpoint::prefix(int64_t i) const {
  return scheme_ == NamingScheme::hugging_face ? "model.layers." + std::to_string(i) + ".self_attn."
                                               : "layers." + std::to_string(i) + ".attn.";
}

std::map<std::string, int64_t> Checkpoint::other_tensors() const {
  std::map<std::string, int64_t> by_dtype;
  for (const auto& [name, shards] : where_) {
    bool attention = false;
    for (int64_t i = 0; i < num_layers() && !attention; ++i) attention = name.starts_with(prefix(i));
    if (!attention) ++by_dtype[std::string(dtype_name(shards_[size_t(shards.front())].info(name).dtype))];
  }
  return by_dtype;
}

std::vector<TensorSummary> Checkpoint::layer_tensors(int64_t i) const {
  layer_type(i);  // range check
  const std::string pre = prefix(i);
  std::vector<TensorSummary> out;
  for (auto it = where_.lower_bound(pre); it != where_.end() && it->first.starts_with(pre); ++it)
    for (int k : it->second) {
      const TensorInfo& t = shards_[size_t(k)].info(it->first);
      out.push_back({t.name, t.dtype, t.shape, t.end - t.begin, shard_names_[size_t(k)]});
    }
  return out;
}

// Maps layer i's stored tensors to spec names; every inconsistency becomes a
// line in `problems`.
std::vector<Checkpoint::Planned> Checkpoint::plan(int64_t i, std::vector<std::string>& problems) const {
  const LayerType type = layer_type(i);
  const std::string pre = prefix(i), type_name(layer_type_name(type));
  const auto file_of = [&](int k) { return (dir_ / shard_names_[size_t(k)]).string(); };
  const auto problem = [&](int k, const std::string& name, const std::string& what) {
    problems.push_back((k >= 0 ? file_of(k) : dir_.string()) + ": tensor " + quote(name) + ": " + what);
  };

  std::map<std::string, Shape> expected;
  for (const WeightSpec& e : weight_specs(config_, type)) expected[e.name] = e.shape;
  std::map<std::string, Planned> found;
  std::map<std::string, std::pair<std::string, int>> scales;  // spec name -> (scale name, shard)
  for (auto it = where_.lower_bound(pre); it != where_.end() && it->first.starts_with(pre); ++it) {
    const std::string& name = it->first;
    if (it->second.size() > 1) {  // reported, then mapped like the first copy (so not also "missing")
      std::string files;
      for (int k : it->second) files += (files.empty() ? "" : ", ") + file_of(k);
      problem(-1, name, "duplicated: stored in " + files);
    }
    const int k = it->second.front();
    const std::string suffix = name.substr(pre.size());
    const WeightEntry* e = entry_of(scheme_, scheme_ == NamingScheme::hugging_face ? canonical_name(suffix) : suffix);
    if (e && expected.count(std::string(e->name))) {
      const std::string hf(e->name);
      if (auto f = found.find(hf); f != found.end())
        problem(k, name, "duplicates " + quote(f->second.name) + " (two spellings of " + quote(hf) + ")");
      else
        found[hf] = {e->id, hf, name, k, "", -1};
      continue;
    }
    bool is_scale = false;  // the scale of a weight this layer uses?
    for (const auto& [hf, _] : expected)
      if (scale_name(scheme_, checkpoint_name(scheme_, i, hf)) == name) {
        scales[hf] = {name, k};
        is_scale = true;
      }
    if (!is_scale) problem(k, name, "unexpected (not a tensor of a " + type_name + " layer)");
  }

  std::vector<Planned> out;
  for (const auto& [hf, shape] : expected) {
    auto f = found.find(hf);
    auto s = scales.find(hf);
    if (f == found.end()) {
      problem(-1, checkpoint_name(scheme_, i, hf),
              "missing (a " + type_name + " layer needs it, shape " + shape_str(shape) + ")");
      continue;
    }
    Planned p = f->second;
    const TensorInfo& t = shards_[size_t(p.shard)].info(p.name);
    bool ok = true;
    const auto bad = [&](int k, const std::string& n, const std::string& what) {
      problem(k, n, what);
      ok = false;
    };
    if (!is_float_dtype(t.dtype) || t.dtype == DType::F8_E8M0)
      bad(p.shard, p.name,
          "dtype " + std::string(dtype_name(t.dtype)) + " is not a weight dtype (F32, BF16, F16, F8_E4M3)");
    if (t.shape != shape) bad(p.shard, p.name, "shape " + shape_str(t.shape) + ", expected " + shape_str(shape));
    if (s != scales.end()) {
      p.scale = s->second.first, p.scale_shard = s->second.second;
      const TensorInfo& st = shards_[size_t(p.scale_shard)].info(p.scale);
      if (t.dtype != DType::F8_E4M3)
        bad(p.scale_shard, p.scale,
            "scale given for a " + std::string(dtype_name(t.dtype)) + " weight (only F8_E4M3 weights are scaled)");
      if (!is_float_dtype(st.dtype))
        bad(p.scale_shard, p.scale, "scale dtype " + std::string(dtype_name(st.dtype)) + " is not a float dtype");
      if (t.shape.size() != 2)
        bad(p.scale_shard, p.scale, "block scales need a 2-D weight, " + quote(p.name) + " is " + shape_str(t.shape));
      else if (st.shape != scale_grid(t.shape))
        bad(p.scale_shard, p.scale,
            "scale grid " + shape_str(st.shape) + ", expected " + shape_str(scale_grid(t.shape)) +
                " (128x128 blocks of " + shape_str(t.shape) + ")");
    } else if (t.dtype == DType::F8_E4M3) {
      bad(p.shard, p.name, "F8_E4M3 weight without its scale tensor " + quote(scale_name(scheme_, p.name)));
    }
    if (ok) out.push_back(std::move(p));
  }
  return out;
}

std::vector<std::string> Checkpoint::layer_problems(int64_t i) const {
  std::vector<std::string> problems;
  plan(i, problems);
  return problems;
}

namespace {

// A projection matrix as stored (its bytes copied out of the mapping), scales decoded to fp32.
StoredMatrix stored_matrix(const SafeTensors& file, const std::string& name, const SafeTensors* scale_file,
                           const std::string& scale) {
  const TensorInfo& t = file.info(name);
  const std::span<const std::byte> b = file.bytes(name);
  StoredMatrix m{t.dtype, t.shape, std::vector<std::byte>(b.begin(), b.end()), Tensor()};
  if (scale_file) m.scale = scale_file->f32(scale);
  return m;
}

}  // namespace

size_t Checkpoint::layer_bytes(int64_t i, WeightFormat format) const {
  std::vector<std::string> problems;
  const std::vector<Planned> planned = plan(i, problems);
  if (!problems.empty()) fail(dir_.string() + ": layer " + std::to_string(i) + " cannot be loaded: " + problems[0]);
  size_t bytes = 0;
  for (const Planned& p : planned) {
    const TensorInfo& t = shards_[size_t(p.shard)].info(p.name);
    const size_t n = static_cast<size_t>(numel(t.shape));
    const bool matrix = is_projection(weight_entry(p.id).role);
    if (!matrix || format == WeightFormat::f32)
      bytes += 4 * n;
    else if (format == WeightFormat::bf16)
      bytes += 2 * n;
    else if (t.dtype == DType::F8_E4M3)
      bytes += n + 4 * static_cast<size_t>(numel(scale_grid(t.shape)));
    else
      bytes += dtype_size(t.dtype) * n;
  }
  return bytes;
}

LayerWeights Checkpoint::load_layer(int64_t i, WeightFormat format) const {
  const LayerType type = layer_type(i);
  std::vector<std::string> problems;
  const std::vector<Planned> planned = plan(i, problems);
  if (!problems.empty()) {
    std::string msg = dir_.string() + ": layer " + std::to_string(i) + " (" + std::string(layer_type_name(type)) +
                      ") cannot be loaded:";
    for (const std::string& p : problems) msg += "\n  " + p;
    fail(msg);
  }
  LayerWeights w = empty_weights(type);
  for (const Planned& p : planned) {
    const SafeTensors& file = shards_[size_t(p.shard)];
    if (format == WeightFormat::native && is_projection(weight_entry(p.id).role)) {
      w.stored[p.hf] =
          stored_matrix(file, p.name, p.scale.empty() ? nullptr : &shards_[size_t(p.scale_shard)], p.scale);
      continue;
    }
    Tensor x = file.f32(p.name);
    if (!p.scale.empty()) apply_block_scales(x, shards_[size_t(p.scale_shard)].f32(p.scale));
    const auto bad = std::count_if(x.data.begin(), x.data.end(), [](float v) { return !std::isfinite(v); });
    if (bad)
      fail(file.label() + ": tensor " + quote(p.name) + ": " + std::to_string(bad) + " of " +
           std::to_string(x.numel()) + " values are not finite" + (p.scale.empty() ? "" : " after scaling"));
    weight(w, p.id) = std::move(x);
  }
  validate_weights(w, config_, type);  // backstop: every slot filled with the right shape
  return w;
}

}  // namespace dsv4
