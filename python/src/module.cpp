// dsv4._core: the C++ library as a Python extension. The Python package
// (python/dsv4) wraps it: NumPy/torch conversion, shapes, the torch module.
#include <omp.h>

#include <atomic>

#include "bindings.h"
#include "dsv4/error.h"
#include "dsv4/version.h"

namespace dsv4::py_bind {
namespace {

std::atomic<int> g_threads{0};

#ifdef DSV4_MPI
constexpr bool kMpi = true;
#else
constexpr bool kMpi = false;
#endif  // 0: OpenMP's default (OMP_NUM_THREADS or all cores)

}  // namespace

void use_configured_threads() {
  if (const int n = g_threads.load(); n > 0 && omp_get_max_threads() != n) omp_set_num_threads(n);
}

}  // namespace dsv4::py_bind

PYBIND11_MODULE(_core, m) {
  using namespace dsv4::py_bind;
  m.doc() = "DeepSeek-V4 attention layers (sliding, CSA, HCA) on CPU: the C++ core of the dsv4 package";
  // A dsv4::Error is a ValueError whose message names the file, tensor, key or shape.
  py::register_exception<dsv4::Error>(m, "Error", PyExc_ValueError);
  m.attr("__version__") = dsv4::version();
  m.def(
      "build_info",
      [] {
        return py::dict(py::arg("version") = dsv4::version(), py::arg("isa") = dsv4::build_isa(),
                        py::arg("blas") = dsv4::blas_info(), py::arg("mpi") = kMpi);
      },
      "How the core was built: version, instruction set of the kernels, BLAS, MPI (context parallelism).");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) dsv4::fail("set_num_threads: n must be >= 1, got " + std::to_string(n));
        g_threads = n;
      },
      py::arg("n"), "Threads per call (results do not depend on it).");
  m.def(
      "get_num_threads", [] { return g_threads > 0 ? g_threads.load() : omp_get_max_threads(); },
      "Threads a call uses.");
  bind_config(m);
  bind_layer(m);
  bind_io(m);
#ifdef DSV4_MPI
  bind_mpi(m);
#endif
}
