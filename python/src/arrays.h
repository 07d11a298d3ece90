// NumPy <-> dsv4 tensors for the bindings. Inputs are read in place (views of
// float32 C-contiguous arrays); outputs hand their buffers to NumPy (no copy).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "dsv4/error.h"
#include "dsv4/tensor.h"

namespace dsv4::py_bind {

namespace py = pybind11;

// A view of a float32 C-contiguous array (the Python layer converts other
// dtypes first). `what` names the argument in errors.
inline TensorView view_of(const py::array& a, const std::string& what) {
  if (!py::isinstance<py::array_t<float>>(a) || !(a.flags() & py::array::c_style))
    fail(what + ": expected a float32 C-contiguous array, got dtype " + std::string(py::str(a.dtype())));
  Shape shape(a.shape(), a.shape() + a.ndim());
  return TensorView(static_cast<const float*>(a.data()), std::move(shape));
}

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& data, const Shape& shape) {
  auto* owned = new std::vector<T>(std::move(data));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()), owned->data(), free_when_done);
}
inline py::array_t<float> to_numpy(Tensor&& t) { return to_numpy(std::move(t.data), t.shape); }
inline py::array_t<int64_t> to_numpy(TensorI64&& t) { return to_numpy(std::move(t.data), t.shape); }

// A copy of a float32 array as an owned Tensor (weights: the layer packs them anyway).
inline Tensor tensor_of(const py::array& a, const std::string& what) {
  const TensorView v = view_of(a, what);
  return Tensor(v.shape, std::vector<float>(v.data, v.data + v.numel()));
}

}  // namespace dsv4::py_bind
