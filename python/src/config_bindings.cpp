// dsv4.Config and dsv4.RopeScaling: the plain struct, its presets and JSON forms.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <filesystem>

#include "bindings.h"
#include "dsv4/config.h"

namespace dsv4::py_bind {
namespace {

// One table of the numeric fields: attributes, keyword construction, to_dict.
struct IntField {
  const char* name;
  int64_t Config::*member;
};
struct RealField {
  const char* name;
  double Config::*member;
};
constexpr IntField kInts[] = {
    {"hidden_size", &Config::hidden_size},
    {"num_attention_heads", &Config::num_attention_heads},
    {"head_dim", &Config::head_dim},
    {"qk_rope_head_dim", &Config::qk_rope_head_dim},
    {"q_lora_rank", &Config::q_lora_rank},
    {"o_groups", &Config::o_groups},
    {"o_lora_rank", &Config::o_lora_rank},
    {"sliding_window", &Config::sliding_window},
    {"compress_rate_csa", &Config::compress_rate_csa},
    {"compress_rate_hca", &Config::compress_rate_hca},
    {"index_n_heads", &Config::index_n_heads},
    {"index_head_dim", &Config::index_head_dim},
    {"index_topk", &Config::index_topk},
};
constexpr RealField kReals[] = {
    {"rope_theta", &Config::rope_theta},
    {"compress_rope_theta", &Config::compress_rope_theta},
    {"rms_norm_eps", &Config::rms_norm_eps},
};

RopeScaling rope_scaling_from(const py::handle& v) {
  if (py::isinstance<RopeScaling>(v)) return v.cast<RopeScaling>();
  if (!py::isinstance<py::dict>(v)) fail("Config: 'rope_scaling' must be a dsv4.RopeScaling or a dict");
  RopeScaling r;
  for (auto [k, val] : v.cast<py::dict>()) {
    const std::string key = py::str(k);
    if (key == "type" || key == "rope_type")
      r.type = val.cast<std::string>();
    else if (key == "factor")
      r.factor = val.cast<double>();
    else if (key == "original_max_position_embeddings")
      r.original_max_position_embeddings = val.cast<int64_t>();
    else if (key == "beta_fast")
      r.beta_fast = val.cast<double>();
    else if (key == "beta_slow")
      r.beta_slow = val.cast<double>();
    else
      fail("Config: unknown 'rope_scaling' key '" + key + "'");
  }
  return r;
}

std::vector<std::string> layer_type_names(const Config& c) {
  std::vector<std::string> out;
  for (LayerType t : c.layer_types) out.emplace_back(layer_type_name(t));
  return out;
}
std::vector<LayerType> parse_layer_types(const std::vector<std::string>& names) {
  std::vector<LayerType> out;
  for (const std::string& n : names) out.push_back(parse_layer_type(n));
  return out;
}

// Config(**fields): the v4-flash defaults of the struct, then each field given.
Config config_from_kwargs(const py::kwargs& kw) {
  Config c;
  for (auto [k, v] : kw) {
    const std::string key = py::str(k);
    bool known = false;
    for (const IntField& f : kInts)
      if (key == f.name) c.*f.member = v.cast<int64_t>(), known = true;
    for (const RealField& f : kReals)
      if (key == f.name) c.*f.member = v.cast<double>(), known = true;
    if (key == "rope_scaling") c.rope_scaling = rope_scaling_from(v), known = true;
    if (key == "layer_types") c.layer_types = parse_layer_types(v.cast<std::vector<std::string>>()), known = true;
    if (!known) fail("Config: unknown field '" + key + "'");
  }
  c.validate();
  return c;
}

py::dict config_to_dict(const Config& c) {
  py::dict d;
  for (const IntField& f : kInts) d[f.name] = c.*f.member;
  for (const RealField& f : kReals) d[f.name] = c.*f.member;
  const RopeScaling& r = c.rope_scaling;
  d["rope_scaling"] = py::dict(py::arg("type") = r.type, py::arg("factor") = r.factor,
                               py::arg("original_max_position_embeddings") = r.original_max_position_embeddings,
                               py::arg("beta_fast") = r.beta_fast, py::arg("beta_slow") = r.beta_slow);
  d["layer_types"] = layer_type_names(c);
  return d;
}

// from_hf: a config.json already parsed to a dict, or a path to the file or its folder.
Config config_from_hf(const py::object& src) {
  if (py::isinstance<py::dict>(src)) {
    const std::string text = py::module_::import("json").attr("dumps")(src).cast<std::string>();
    return config_from_json_text(text, "config dict");
  }
  std::filesystem::path p = src.cast<std::filesystem::path>();
  if (std::filesystem::is_directory(p)) p /= "config.json";
  return config_from_file(p);
}

}  // namespace

void bind_config(py::module_& m) {
  py::class_<RopeScaling>(m, "RopeScaling", "YaRN parameters of the compressed layers' RoPE.")
      .def(py::init<>())
      .def_readwrite("type", &RopeScaling::type)
      .def_readwrite("factor", &RopeScaling::factor)
      .def_readwrite("original_max_position_embeddings", &RopeScaling::original_max_position_embeddings)
      .def_readwrite("beta_fast", &RopeScaling::beta_fast)
      .def_readwrite("beta_slow", &RopeScaling::beta_slow);

  auto cls = py::class_<Config>(m, "Config", R"(Hyper-parameters of a DeepSeek-V4 attention layer (the spec's symbols).

Config(**fields) starts from the v4-flash values and sets the fields given;
Config.preset("v4-flash" | "v4-pro"); Config.from_hf(dict | path) reads a
Hugging Face config.json; Config.from_json(text) also reads a conformance
file's `config` metadata.)");
  cls.def(py::init(&config_from_kwargs))
      .def_static("preset", &Config::preset, py::arg("name"))
      .def_static("from_hf", &config_from_hf, py::arg("config"), "config.json as a dict, a file path or a model folder")
      .def_static(
          "from_json", [](const std::string& text) { return config_from_json_text(text, "config JSON"); },
          py::arg("text"))
      .def_readwrite("rope_scaling", &Config::rope_scaling)
      .def_property("layer_types", &layer_type_names,
                    [](Config& c, const std::vector<std::string>& v) { c.layer_types = parse_layer_types(v); })
      .def("validate", &Config::validate)
      .def("compress_rate", [](const Config& c, const std::string& t) { return c.compress_rate(parse_layer_type(t)); })
      .def("to_dict", &config_to_dict)
      .def("__eq__",
           [](const Config& a, const Config& b) {
             return a.fingerprint() == b.fingerprint() && a.layer_types == b.layer_types;
           })
      .def("__repr__", [](const Config& c) {
        std::string s = "dsv4.Config(";
        for (const IntField& f : kInts) s += std::string(f.name) + "=" + std::to_string(c.*f.member) + ", ";
        return s + "...)";
      });
  for (const IntField& f : kInts) cls.def_readwrite(f.name, f.member);
  for (const RealField& f : kReals) cls.def_readwrite(f.name, f.member);
}

}  // namespace dsv4::py_bind
