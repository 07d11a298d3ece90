// The parts of the dsv4._core extension module, one function per concept.
#pragma once
#include <pybind11/pybind11.h>

namespace dsv4::py_bind {

namespace py = pybind11;

void bind_config(py::module_& m);  // Config, RopeScaling
void bind_layer(py::module_& m);   // Layer, State, Tape
void bind_io(py::module_& m);      // safetensors files
void bind_mpi(py::module_& m);     // context parallelism (only where built with MPI: DSV4_MPI)

// Applies dsv4.set_num_threads() to the calling thread's OpenMP settings
// (OpenMP keeps the thread count per calling thread).
void use_configured_threads();

}  // namespace dsv4::py_bind
