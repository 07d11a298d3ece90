// dsv4._core.Layer, State and Tape. Every compute call releases the GIL;
// inputs are read in place, outputs handed to NumPy without a copy.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <cstring>
#include <optional>
#include <tuple>

#include "arrays.h"
#include "bindings.h"
#include "dsv4/layer.h"
#include "dsv4/model.h"
#include "dsv4/weights.h"
#include "gradients.h"
#include "state.h"

namespace dsv4::py_bind {
namespace {

WeightFormat parse_format(const std::string& s) { return parse_weight_format(s); }

py::dict intermediates_dict(Intermediates&& d, LayerType t) {
  py::dict out;
  out["q"] = to_numpy(std::move(d.q));
  out["kv"] = to_numpy(std::move(d.kv));
  if (t == LayerType::sliding) return out;
  out["compressed_kv"] = to_numpy(std::move(d.compressed_kv));
  if (t == LayerType::hca) return out;
  out["indexer_q"] = to_numpy(std::move(d.indexer_q));
  out["indexer_kv"] = to_numpy(std::move(d.indexer_kv));
  out["index_scores"] = to_numpy(std::move(d.index_scores));
  out["topk"] = to_numpy(std::move(d.topk));
  return out;
}

py::list intermediates_list(std::vector<Intermediates>&& v, LayerType t) {
  py::list out;
  for (Intermediates& d : v) out.append(intermediates_dict(std::move(d), t));
  return out;
}

py::dict map_dict(AttentionMap&& m, LayerType t) {
  py::dict out;
  out["mass"] = to_numpy(std::move(m.mass));
  if (t == LayerType::csa) out["selected"] = to_numpy(std::move(m.selected));
  if (!m.dense.empty()) out["dense"] = to_numpy(std::move(m.dense));
  return out;
}

using NamedArrays = std::vector<std::tuple<std::string, std::string, py::array>>;

// Weights in their stored dtypes: (name, safetensors dtype name, C-contiguous
// array of that element size); the bytes are copied.
std::vector<std::pair<std::string, RawTensor>> raw_tensors(const NamedArrays& named) {
  std::vector<std::pair<std::string, RawTensor>> raw;
  for (const auto& [name, dtype, a] : named) {
    const std::optional<DType> dt = parse_dtype_name(dtype);
    if (!dt) fail("weight '" + name + "': unknown dtype '" + dtype + "'");
    if (!(a.flags() & py::array::c_style) || static_cast<size_t>(a.itemsize()) != dtype_size(*dt))
      fail("weight '" + name + "': expected a C-contiguous array of " + std::to_string(dtype_size(*dt)) +
           "-byte elements for " + dtype);
    RawTensor r{*dt, Shape(a.shape(), a.shape() + a.ndim()), std::vector<std::byte>(static_cast<size_t>(a.nbytes()))};
    std::memcpy(r.data.data(), a.data(), r.data.size());
    raw.emplace_back(name, std::move(r));
  }
  return raw;
}

Layer make_layer(const Config& c, const std::string& type, const NamedArrays& named, const std::string& format,
                 const std::string& numerics) {
  const LayerType t = parse_layer_type(type);
  const LayerOptions opt{parse_format(format), parse_numerics(numerics)};
  auto raw = raw_tensors(named);
  py::gil_scoped_release nogil;
  return Layer(c, t, layer_weights_from_stored(std::move(raw), c, t, opt.weights == WeightFormat::native), opt);
}

// dsv4.torch.Attention's parameters: {reference state_dict key: float32 array} from
// module-relative or full checkpoint names of either scheme (FP8 times its scales).
py::dict module_weights(const Config& c, const std::string& type, const NamedArrays& named) {
  const LayerType t = parse_layer_type(type);
  auto raw = raw_tensors(named);
  LayerWeights w;
  {
    py::gil_scoped_release nogil;
    w = layer_weights_from_stored(std::move(raw), c, t, false);
  }
  return weight_gradients(std::move(w), c, t);  // the weight table's names and shapes
}

// (config, layer type, module_weights) of layer i of a checkpoint folder.
py::tuple model_weights(const std::filesystem::path& dir, int64_t i) {
  std::optional<Model> m;
  LayerWeights w;
  {
    py::gil_scoped_release nogil;
    m.emplace(Model::open(dir));
    w = m->load_layer(i, WeightFormat::f32);
  }
  const LayerType t = m->layer_type(i);
  return py::make_tuple(m->config(), std::string(layer_type_name(t)), weight_gradients(std::move(w), m->config(), t));
}

// Packed documents' boundaries (int64, 1-D; the Python layer converts), or none.
using Boundaries = std::optional<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>;
std::optional<std::vector<int64_t>> boundaries(const Boundaries& cu) {
  if (!cu) return std::nullopt;
  if (cu->ndim() != 1)
    fail("cu_seqlens: expected a 1-D array of boundaries, got " + std::to_string(cu->ndim()) + " dims");
  return std::vector<int64_t>(cu->data(), cu->data() + cu->size());
}

py::object forward(const Layer& l, const py::array& x, bool debug, const Boundaries& cu_seqlens) {
  const TensorView v = view_of(x, "input hidden_states");
  const auto cu = boundaries(cu_seqlens);
  std::vector<Intermediates> dbg;
  Tensor y;
  {
    py::gil_scoped_release nogil;
    use_configured_threads();
    y = cu ? l.forward(v, *cu, debug ? &dbg : nullptr) : l.forward(v, debug ? &dbg : nullptr);
  }
  if (!debug) return to_numpy(std::move(y));
  return py::make_tuple(to_numpy(std::move(y)), intermediates_list(std::move(dbg), l.type()));
}

py::object forward_batch(const Layer& l, const std::vector<py::array>& xs, const std::vector<State*>& states,
                         bool debug) {
  std::vector<TensorView> views;
  for (size_t i = 0; i < xs.size(); ++i) views.push_back(view_of(xs[i], "chunk " + std::to_string(i)));
  std::vector<LayerState*> sts;
  for (State* s : states) sts.push_back(s ? &s->state : nullptr);
  std::vector<Intermediates> dbg;
  std::vector<Tensor> ys;
  {
    py::gil_scoped_release nogil;
    use_configured_threads();
    ys = l.forward_batch(std::span<const TensorView>(views), sts, debug ? &dbg : nullptr);
  }
  py::list out;
  for (Tensor& y : ys) out.append(to_numpy(std::move(y)));
  if (!debug) return out;
  return py::make_tuple(out, intermediates_list(std::move(dbg), l.type()));
}

py::list attention_map(const Layer& l, const py::array& x, bool dense, const Boundaries& cu_seqlens) {
  const TensorView v = view_of(x, "input hidden_states");
  const auto cu = boundaries(cu_seqlens);
  std::vector<AttentionMap> maps;
  {
    py::gil_scoped_release nogil;
    use_configured_threads();
    maps = cu ? l.attention_map(v, *cu, dense) : l.attention_map(v, dense);
  }
  py::list out;
  for (AttentionMap& m : maps) out.append(map_dict(std::move(m), l.type()));
  return out;
}

py::dict attention_map_state(const Layer& l, const py::array& x, State& s, bool dense) {
  const TensorView v = view_of(x, "input hidden_states");
  AttentionMap m;
  {
    py::gil_scoped_release nogil;
    use_configured_threads();
    m = l.attention_map(v, s.state, dense);
  }
  return map_dict(std::move(m), l.type());
}

// A Tape with the Python object of the layer that made it: the tape points into
// that layer's packed weights, so it keeps the layer alive, and backward takes
// only its own layer's tapes.
struct TrainTape {
  Tape tape;
  py::object layer;
};

py::tuple forward_train(const py::object& self, const py::array& x, const Boundaries& cu_seqlens) {
  const Layer& l = self.cast<const Layer&>();
  const TensorView v = view_of(x, "input hidden_states");
  const auto cu = boundaries(cu_seqlens);
  TrainTape t{Tape(), self};
  Tensor y;
  {
    py::gil_scoped_release nogil;
    use_configured_threads();
    y = cu ? l.forward_train(v, *cu, t.tape) : l.forward_train(v, t.tape);
  }
  return py::make_tuple(to_numpy(std::move(y)), py::cast(std::move(t)));
}

py::tuple backward_tape(const py::object& self, const TrainTape& t, const py::array& dy) {
  if (!t.layer.is(self)) fail("backward: the tape was made by another layer's forward_train");
  const Layer& l = self.cast<const Layer&>();
  const TensorView v = view_of(dy, "dy");
  LayerGradients g;
  {
    py::gil_scoped_release nogil;
    use_configured_threads();
    g = l.backward(t.tape, v);
  }
  return gradients_tuple(std::move(g), l.config(), l.type());
}

py::tuple backward_input(const Layer& l, const py::array& x, const py::array& dy, const Boundaries& cu_seqlens) {
  const TensorView vx = view_of(x, "input hidden_states"), vdy = view_of(dy, "dy");
  const auto cu = boundaries(cu_seqlens);
  LayerGradients g;
  {
    py::gil_scoped_release nogil;
    use_configured_threads();
    g = cu ? l.backward(vx, *cu, vdy) : l.backward(vx, vdy);
  }
  return gradients_tuple(std::move(g), l.config(), l.type());
}

}  // namespace

void bind_layer(py::module_& m) {
  m.def("module_weights", &module_weights, py::arg("config"), py::arg("layer_type"), py::arg("weights"));
  m.def("model_weights", &model_weights, py::arg("path"), py::arg("layer_index"));
  m.def(
      "cu_seqlens_from_segment_ids",
      [](const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& ids) {
        if (ids.ndim() != 1) fail("segment_ids: expected a 1-D array (one id per token of x [T, d])");
        const std::vector<int64_t> cu = cu_seqlens_from_segment_ids({ids.data(), static_cast<size_t>(ids.size())});
        return to_numpy(std::vector<int64_t>(cu), {static_cast<int64_t>(cu.size())});
      },
      py::arg("segment_ids"));
  py::class_<State>(m, "State")
      .def_property_readonly("position", [](const State& s) { return s.state.position(); })
      .def_property_readonly("nbytes", [](const State& s) { return s.state.bytes(); })
      .def_property_readonly("layer_type", [](const State& s) { return std::string(layer_type_name(s.state.type())); })
      .def("clone",
           [](const State& s) {
             return State{s.state.clone(), s.config};
           })
      .def("reset", [](State& s) { s.state.reset(); })
      .def(
          "save", [](const State& s, const std::filesystem::path& p) { save_state(s.state, s.config, p); },
          py::arg("path"));

  py::class_<TrainTape>(m, "Tape").def_property_readonly("nbytes", [](const TrainTape& t) { return t.tape.bytes(); });

  py::class_<Layer>(m, "Layer")
      .def(py::init(&make_layer), py::arg("config"), py::arg("layer_type"), py::arg("weights"),
           py::arg("weights_format") = "f32", py::arg("numerics") = "reference")
      .def_static(
          "from_model",
          [](const std::filesystem::path& dir, int64_t i, const std::string& format, const std::string& numerics) {
            const LayerOptions opt{parse_format(format), parse_numerics(numerics)};
            py::gil_scoped_release nogil;
            return Model::open(dir).layer(i, opt);
          },
          py::arg("path"), py::arg("layer_index"), py::arg("weights_format") = "f32", py::arg("numerics") = "reference")
      .def_property_readonly("numerics", [](const Layer& l) { return std::string(numerics_name(l.numerics())); })
      .def_property_readonly("config", &Layer::config)
      .def_property_readonly("layer_type", [](const Layer& l) { return std::string(layer_type_name(l.type())); })
      .def_property_readonly("weight_bytes", &Layer::weight_bytes)
      .def("forward", &forward, py::arg("x"), py::arg("debug") = false, py::arg("cu_seqlens") = py::none())
      .def(
          "forward_state",
          [](const Layer& l, const py::array& x, State& s, bool debug) {
            py::object r = forward_batch(l, {x}, {&s}, debug);
            if (!debug) return py::object(r.cast<py::list>()[0]);
            auto t = r.cast<py::tuple>();
            return py::object(py::make_tuple(t[0].cast<py::list>()[0], t[1].cast<py::list>()[0]));
          },
          py::arg("x"), py::arg("state"), py::arg("debug") = false)
      .def("forward_batch", &forward_batch, py::arg("xs"), py::arg("states"), py::arg("debug") = false)
      .def("attention_map", &attention_map, py::arg("x"), py::arg("dense") = false, py::arg("cu_seqlens") = py::none())
      .def("attention_map_state", &attention_map_state, py::arg("x"), py::arg("state"), py::arg("dense") = false)
      .def("forward_train", &forward_train, py::arg("x"), py::arg("cu_seqlens") = py::none())
      .def("backward", &backward_tape, py::arg("tape"), py::arg("dy"))
      .def("backward_input", &backward_input, py::arg("x"), py::arg("dy"), py::arg("cu_seqlens") = py::none())
      .def("new_state",
           [](const Layer& l) {
             return State{l.new_state(), l.config()};
           })
      .def(
          "synthetic_state",
          [](const Layer& l, int64_t tokens, uint64_t seed) {
            py::gil_scoped_release nogil;
            return State{random_state(l.config(), l.type(), tokens, seed, l.numerics()), l.config()};
          },
          py::arg("tokens"), py::arg("seed") = 0)
      .def(
          "load_state",
          [](const Layer& l, const std::filesystem::path& p) {
            return State{load_state(l.config(), l.type(), p, l.numerics()), l.config()};
          },
          py::arg("path"));
}

}  // namespace dsv4::py_bind
