// Layer weights from a name -> tensor mapping (a state_dict): the spec's
// module-relative names or full checkpoint names of either scheme.
#include <algorithm>
#include <map>
#include <optional>
#include <regex>

#include "common/dtype.h"
#include "dsv4/checkpoint.h"
#include "dsv4/weights.h"
#include "io/stored_weights.h"

namespace dsv4 {
namespace {

// The spec name behind `key`, or "" if it names no tensor of this layer type.
std::string spec_name(const std::string& given, const std::vector<WeightSpec>& expected) {
  const std::string key = canonical_name(given);
  for (const WeightSpec& e : expected)
    if (e.name == key) return e.name;
  static const std::regex full(R"(^(?:model\.)?layers\.(\d{1,9})\.(?:self_attn|attn)\..+$)");
  std::smatch m;
  if (!std::regex_match(key, m, full)) return "";
  const int64_t layer = std::stoll(m[1].str());
  for (const WeightSpec& e : expected)
    for (NamingScheme s : {NamingScheme::hugging_face, NamingScheme::deepseek})
      if (checkpoint_name(s, layer, e.name) == key) return e.name;
  return "";
}

// A weight given as fp32 or (stored) as its checkpoint dtype.
struct Given {
  std::string key;
  Tensor f32;
  std::optional<StoredMatrix> stored;
  const Shape& shape() const { return stored ? stored->shape : f32.shape; }
};

// Places every given tensor under its spec name; `problems` may hold earlier
// ones (all are reported together).
LayerWeights assemble(std::vector<Given> named, const Config& c, LayerType t, std::vector<std::string> problems) {
  const std::vector<WeightSpec> expected = weight_specs(c, t);
  const std::string type = std::string(layer_type_name(t));
  std::map<std::string, std::string> given;  // spec name -> the key that gave it
  std::map<std::string, Shape> shapes;
  LayerWeights w = empty_weights(t);
  for (Given& g : named) {
    const std::string name = spec_name(g.key, expected);
    if (name.empty()) {
      problems.push_back("'" + g.key + "': unexpected (not a tensor of a " + type + " layer)");
      continue;
    }
    if (auto [it, fresh] = given.emplace(name, g.key); !fresh) {
      problems.push_back("'" + g.key + "': duplicates '" + it->second + "' (both are '" + name + "')");
      continue;
    }
    shapes[name] = g.shape();
    if (g.stored)
      w.stored[name] = std::move(*g.stored);
    else
      weight(w, find_weight(name)->id) = std::move(g.f32);
  }
  for (const WeightSpec& e : expected) {
    if (!given.count(e.name)) {
      problems.push_back("'" + e.name + "': missing (a " + type + " layer needs it, shape " + shape_str(e.shape) + ")");
      continue;
    }
    if (shapes[e.name] != e.shape)
      problems.push_back("'" + given[e.name] + "': shape " + shape_str(shapes[e.name]) + ", expected " +
                         shape_str(e.shape));
  }
  if (!problems.empty()) {
    std::string msg = type + " layer weights: " + std::to_string(problems.size()) + " problem(s):";
    for (const std::string& p : problems) msg += "\n  " + p;
    fail(msg);
  }
  validate_weights(w, c, t);  // finiteness, data size
  return w;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The weight a block-scale tensor belongs to ("x.scale", "x.weight_scale_inv" -> "x.weight"), or "".
std::string scaled_weight(const std::string& key) {
  for (const char* tail : {".scale", ".weight_scale_inv"})
    if (ends_with(key, tail)) return key.substr(0, key.size() - std::string(tail).size()) + ".weight";
  return "";
}

Tensor decode(const RawTensor& r) {
  Tensor out(r.shape);
  decode_to_f32(r.dtype == DType::U8 ? DType::F8_E8M0 : r.dtype, r.data, out.ptr());
  return out;
}

}  // namespace

LayerWeights layer_weights_from_named(std::vector<std::pair<std::string, Tensor>> named, const Config& c, LayerType t) {
  std::vector<Given> given;
  for (auto& [key, tensor] : named) given.push_back({key, std::move(tensor), std::nullopt});
  return assemble(std::move(given), c, t, {});
}

LayerWeights layer_weights_from_stored(std::vector<std::pair<std::string, RawTensor>> named, const Config& c,
                                       LayerType t, bool keep_stored) {
  std::vector<std::string> problems;
  const auto bad_bytes = [&](const std::string& key, const RawTensor& r) {
    const bool ok = r.data.size() == static_cast<size_t>(numel(r.shape)) * dtype_size(r.dtype);
    if (!ok)
      problems.push_back("'" + key + "': " + std::to_string(r.data.size()) + " bytes for " +
                         std::string(dtype_name(r.dtype)) + " " + shape_str(r.shape));
    return !ok;
  };
  std::map<std::string, std::pair<std::string, Tensor>> scales;  // weight key -> (scale key, factors)
  for (auto& [key, r] : named) {
    const std::string weight = scaled_weight(key);
    if (weight.empty() || bad_bytes(key, r)) continue;
    if (r.dtype != DType::U8 && !is_float_dtype(r.dtype))
      problems.push_back("'" + key + "': dtype " + std::string(dtype_name(r.dtype)) + " is not a scale dtype");
    else if (!scales.emplace(weight, std::pair(key, decode(r))).second)
      problems.push_back("'" + key + "': a second block-scale tensor for '" + weight + "'");
  }
  const std::vector<WeightSpec> expected = weight_specs(c, t);
  std::vector<Given> given;
  for (auto& [key, r] : named) {
    if (!scaled_weight(key).empty() || bad_bytes(key, r)) continue;
    const auto sc = scales.find(key);
    if (r.dtype == DType::U8 && sc != scales.end()) r.dtype = DType::F8_E4M3;  // codes, as NumPy holds FP8
    const std::string at = "'" + key + "' (" + std::string(dtype_name(r.dtype)) + ")";
    if (!is_float_dtype(r.dtype) || r.dtype == DType::F8_E8M0) {
      problems.push_back(at + ": not a weight dtype (F32, BF16, F16, F8_E4M3, or U8 codes with block scales)");
      continue;
    }
    const bool fp8 = r.dtype == DType::F8_E4M3;
    if (fp8 != (sc != scales.end())) {
      problems.push_back(fp8 ? at + ": FP8 needs its block scales ('" + key.substr(0, key.size() - 7) + ".scale' or '" +
                                   key + "_scale_inv')"
                             : "'" + sc->second.first + "': block scales for a weight that is not FP8");
      continue;
    }
    Tensor scale = fp8 ? std::move(sc->second.second) : Tensor();
    if (fp8 && (r.shape.size() != 2 || scale.shape != scale_grid(r.shape))) {
      problems.push_back(at + ": scales of shape " + shape_str(scale.shape) + " for weight " + shape_str(r.shape));
      continue;
    }
    const std::string name = spec_name(key, expected);
    if (keep_stored && !name.empty() && is_projection(find_weight(name)->role)) {
      given.push_back({key, Tensor(), StoredMatrix{r.dtype, r.shape, std::move(r.data), std::move(scale)}});
      continue;
    }
    Tensor x = decode(r);
    if (fp8) apply_block_scales(x, scale);
    given.push_back({key, std::move(x), std::nullopt});
  }
  for (const auto& [weight, s] : scales) {
    const std::string& w = weight;  // clang 14 (the TSan build) cannot capture a structured binding
    if (std::none_of(named.begin(), named.end(), [&](const auto& n) { return n.first == w; }))
      problems.push_back("'" + s.first + "': block scales of '" + weight + "', which is not given");
  }
  return assemble(std::move(given), c, t, std::move(problems));
}

}  // namespace dsv4
