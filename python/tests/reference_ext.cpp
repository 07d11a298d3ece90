// _dsv4_reference: the naive reference backward (reference/backward.cpp) for the
// Python tests only, to compare it with PyTorch autograd (test_backward.py).
// Built with the tests (python/CMakeLists.txt) into build/python/tests, which
// ctest puts on PYTHONPATH; never installed, never part of the dsv4 package.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "arrays.h"
#include "gradients.h"
#include "reference.h"

namespace py = pybind11;
using namespace dsv4;
using namespace dsv4::py_bind;

namespace {

// reference_backward(config, layer_type, weights, x, dy) -> (dx, {name: dweight}).
// weights: {name: float32 array} (the reference state_dict keys); x, dy: float32 [B, S, d].
py::tuple reference_backward(const Config& c, const std::string& type, const py::dict& weights, const py::array& x,
                             const py::array& dy) {
  const LayerType t = parse_layer_type(type);
  std::vector<std::pair<std::string, Tensor>> named;
  for (auto [k, v] : weights) {
    const std::string name = py::str(k);
    const py::array a = py::array::ensure(v);
    if (!a) fail("weight '" + name + "': not an array");
    named.emplace_back(name, tensor_of(a, "weight '" + name + "'"));
  }
  LayerWeights w = layer_weights_from_named(std::move(named), c, t);
  const Tensor xt = tensor_of(x, "x"), dyt = tensor_of(dy, "dy");
  if (xt.shape.size() != 3) fail("reference_backward: x must be [B, S, d], got " + shape_str(xt.shape));
  LayerGradients g;
  {
    py::gil_scoped_release nogil;
    g = reference::backward(c, t, w, xt, dyt);
  }
  return gradients_tuple(std::move(g), c, t);
}

}  // namespace

PYBIND11_MODULE(_dsv4_reference, m) {
  m.doc() = "The naive reference backward, for dsv4's Python tests only";
  py::module_::import("dsv4._core");  // dsv4.Config's type and the dsv4.Error translation
  m.def("reference_backward", &reference_backward, py::arg("config"), py::arg("layer_type"), py::arg("weights"),
        py::arg("x"), py::arg("dy"));
}
