// dsv4._core's context parallelism (docs/distributed.md), built when CMake found
// MPI (DSV4_MPI): the module then links dsv4_mpi. The communicator arrives as
// the address of the MPI_Comm inside an mpi4py.MPI.Comm (MPI._addressof; the
// Python layer checks the type): no mpi4py headers at build time, and the
// handle is read as this MPI's own MPI_Comm type (a pointer in Open MPI, an int
// in MPICH). mpi4py and this module must use the same MPI library.
#include <mpi.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "arrays.h"
#include "bindings.h"
#include "dsv4/context_parallel.h"
#include "state.h"

namespace dsv4::py_bind {
namespace {

MPI_Comm comm_at(uintptr_t address) {
  if (address == 0) fail("context_parallel_forward: comm: a null address (expected an mpi4py.MPI.Comm)");
  const MPI_Comm c = *reinterpret_cast<const MPI_Comm*>(address);
  if (c == MPI_COMM_NULL) fail("context_parallel_forward: comm is MPI.COMM_NULL");
  return c;
}

py::dict stats_dict(const ContextStats& s) {
  return py::dict(py::arg("prepare_s") = s.prepare_s, py::arg("exchange_s") = s.exchange_s,
                  py::arg("forward_s") = s.forward_s, py::arg("bytes_sent") = s.bytes_sent,
                  py::arg("bytes_received") = s.bytes_received);
}

// (this rank's outputs, its stats). Collective: the GIL is released for the
// whole call, so other Python threads run while the ranks exchange.
py::tuple forward(const Layer& l, const py::array& x, int64_t seq, uintptr_t comm, const std::string& layout,
                  bool gather_state, int root, State* state) {
  const TensorView v = view_of(x, "input hidden_states");
  const ContextOptions o{context_layout(layout), gather_state, root};
  const MPI_Comm c = comm_at(comm);
  ContextStats st;
  Tensor y;
  {
    py::gil_scoped_release nogil;
    use_configured_threads();
    y = context_parallel_forward(l, v, seq, c, o, state ? &state->state : nullptr, &st);
  }
  return py::make_tuple(to_numpy(std::move(y)), stats_dict(st));
}

}  // namespace

void bind_mpi(py::module_& m) {
  m.def("context_parallel_forward", &forward, py::arg("layer"), py::arg("x"), py::arg("seq"), py::arg("comm_address"),
        py::arg("layout"), py::arg("gather_state"), py::arg("root"), py::arg("state").none(true));
  m.def(
      "rank_blocks",
      [](int64_t seq, int ranks, int rank, const std::string& layout) {
        if (rank < 0 || rank >= ranks)
          fail("rank_blocks: rank " + std::to_string(rank) + " of " + std::to_string(ranks) + " ranks");
        std::vector<std::pair<int64_t, int64_t>> out;
        for (const TokenBlock& b : rank_blocks(seq, ranks, rank, context_layout(layout)))
          out.emplace_back(b.begin, b.end);
        return out;
      },
      py::arg("seq"), py::arg("ranks"), py::arg("rank"), py::arg("layout"));
}

}  // namespace dsv4::py_bind
