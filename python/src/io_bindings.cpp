// Safetensors files as dicts of NumPy arrays (inputs for dsv4.plot, golden files in tests).
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include "arrays.h"
#include "bindings.h"
#include "dsv4/atomic_file.h"
#include "dsv4/safetensors.h"

namespace dsv4::py_bind {
namespace {

py::dict load(const std::filesystem::path& path) {
  const SafeTensors f = SafeTensors::open(path);
  py::dict out;
  for (const std::string& name : f.names()) {
    if (f.info(name).dtype == DType::I64)
      out[py::str(name)] = to_numpy(f.i64(name));
    else
      out[py::str(name)] = to_numpy(f.f32(name));
  }
  return out;
}

void save(const std::filesystem::path& path, const py::dict& tensors, const std::map<std::string, std::string>& meta) {
  std::vector<NamedTensor> out;
  for (auto [k, v] : tensors) {
    const std::string name = py::str(k);
    py::array a = py::array::ensure(v);
    if (!a) fail("save_safetensors: '" + name + "' is not an array");
    if (py::isinstance<py::array_t<int64_t>>(a)) {
      auto c = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
      TensorI64 t{Shape(c.shape(), c.shape() + c.ndim()), std::vector<int64_t>(c.data(), c.data() + c.size())};
      out.push_back(named(name, t));
    } else {
      out.push_back(named(name, tensor_of(a, "save_safetensors: '" + name + "'")));
    }
  }
  write_safetensors(path, out, meta);
}

}  // namespace

void bind_io(py::module_& m) {
  m.def("load_safetensors", &load, py::arg("path"),
        "All tensors of a safetensors file: float dtypes as float32, I64 as int64.");
  m.def(
      "safetensors_metadata", [](const std::filesystem::path& p) { return SafeTensors::open(p).metadata(); },
      py::arg("path"));
  m.def("save_safetensors", &save, py::arg("path"), py::arg("tensors"),
        py::arg("metadata") = std::map<std::string, std::string>{},
        "Writes float32 (other float dtypes: convert first) and int64 arrays.");
  m.def(
      "write_file_atomic",
      [](const std::filesystem::path& p, const py::bytes& b) { write_file_atomic(p, std::string(b)); }, py::arg("path"),
      py::arg("data"), "Writes bytes beside the path, syncs, renames over it (never a torn file).");
}

}  // namespace dsv4::py_bind
