// Layer weights from a name -> tensor mapping (a state_dict): the spec's
// module-relative names or full checkpoint names of either scheme.
#include <map>
#include <regex>

#include "dsv4/model.h"
#include "dsv4/weights.h"
#include "io/weight_table.h"

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

}  // namespace

LayerWeights layer_weights_from_named(std::vector<std::pair<std::string, Tensor>> named, const Config& c,
                                      LayerType t) {
  const std::vector<WeightSpec> expected = expected_weights(c, t);
  const std::string type = std::string(layer_type_name(t));
  std::vector<std::string> problems;
  std::map<std::string, std::string> given;  // spec name -> the key that gave it
  LayerWeights w;
  if (t != LayerType::sliding) w.compressor.emplace();
  if (t == LayerType::csa) w.indexer.emplace();
  for (auto& [key, tensor] : named) {
    const std::string name = spec_name(key, expected);
    if (name.empty()) {
      problems.push_back("'" + key + "': unexpected (not a tensor of a " + type + " layer)");
      continue;
    }
    if (auto [it, fresh] = given.emplace(name, key); !fresh) {
      problems.push_back("'" + key + "': duplicates '" + it->second + "' (both are '" + name + "')");
      continue;
    }
    *weight_slot(w, name) = std::move(tensor);
  }
  for (const WeightSpec& e : expected) {
    if (!given.count(e.name)) {
      problems.push_back("'" + e.name + "': missing (a " + type + " layer needs it, shape " + shape_str(e.shape) + ")");
      continue;
    }
    const Tensor& x = *weight_slot(w, e.name);
    if (x.shape != e.shape)
      problems.push_back("'" + given[e.name] + "': shape " + shape_str(x.shape) + ", expected " + shape_str(e.shape));
  }
  if (!problems.empty()) {
    std::string msg = type + " layer weights: " + std::to_string(problems.size()) + " problem(s):";
    for (const std::string& p : problems) msg += "\n  " + p;
    fail(msg);
  }
  validate_weights(w, c, t);  // finiteness, data size
  return w;
}

}  // namespace dsv4
