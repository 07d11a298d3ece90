// LayerGradients as Python objects: dx and a dict {spec name: array} whose keys
// are exactly those Layer(...) accepts (the reference state_dict keys), taken
// from the weight table (for_each_weight, dsv4/weights.h), never a list here.
// Shared by dsv4._core and the tests' reference module.
#pragma once
#include <pybind11/pybind11.h>

#include <utility>

#include "arrays.h"
#include "dsv4/error.h"
#include "dsv4/train.h"
#include "dsv4/weights.h"

namespace dsv4::py_bind {

namespace py = pybind11;

// Every weight of the layer type, in the weight table's order; each array takes
// over its Tensor's buffer. Checks each shape against the table (a mis-sized
// buffer must not reach NumPy).
inline py::dict weight_gradients(LayerWeights&& w, const Config& c, LayerType t) {
  py::dict out;
  for_each_weight(w, c, t, [&](const WeightSpec& spec, Tensor& g) {
    if (g.shape != spec.shape || static_cast<int64_t>(g.data.size()) != numel(spec.shape))
      fail("gradient of '" + spec.name + "': shape " + shape_str(g.shape) + ", expected " + shape_str(spec.shape));
    out[py::str(spec.name)] = to_numpy(std::move(g));
  });
  return out;
}

// (dx, {name: dweight}) as NumPy arrays.
inline py::tuple gradients_tuple(LayerGradients&& g, const Config& c, LayerType t) {
  if (static_cast<int64_t>(g.dx.data.size()) != numel(g.dx.shape))
    fail("gradient of the input: " + std::to_string(g.dx.data.size()) + " values for shape " + shape_str(g.dx.shape));
  py::array dx = to_numpy(std::move(g.dx));
  return py::make_tuple(std::move(dx), weight_gradients(std::move(g.weights), c, t));
}

}  // namespace dsv4::py_bind
