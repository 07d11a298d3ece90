// Shared by the MPI tests (dsv4_mpi_tests): the communicator's shape, a rank's
// rows and a random case's description.
#pragma once
#include <mpi.h>

#include <string>
#include <vector>

#include "dsv4/context_parallel.h"

namespace dsv4::test {

inline int rank_of(MPI_Comm c) {
  int r = 0;
  MPI_Comm_rank(c, &r);
  return r;
}
inline int size_of(MPI_Comm c) {
  int n = 0;
  MPI_Comm_size(c, &n);
  return n;
}

// Rows of x [S, d] that `rank` holds (its blocks, concatenated in position order), as [n, d].
inline Tensor rank_rows(const Tensor& x, int ranks, int rank, ContextLayout layout) {
  const int64_t d = x.dim(1);
  std::vector<float> mine;
  for (const TokenBlock& b : rank_blocks(x.dim(0), ranks, rank, layout))
    mine.insert(mine.end(), x.data.begin() + b.begin * d, x.data.begin() + b.end * d);
  const auto n = static_cast<int64_t>(mine.size()) / d;
  return Tensor({n, d}, std::move(mine));
}

// One random context-parallel case (the backward's cases keep reference numerics).
struct Case {
  Config c;
  LayerType type = LayerType::csa;
  Numerics numerics = Numerics::reference;
  WeightFormat weights = WeightFormat::f32;
  ContextLayout layout = ContextLayout::zigzag;
  int64_t seq = 0;
};

inline std::string describe(const Case& k) {
  return std::string(layer_type_name(k.type)) + (k.numerics == Numerics::deployment ? " deployment" : " reference") +
         (k.layout == ContextLayout::zigzag ? " zigzag" : " contiguous") +
         (k.weights == WeightFormat::bf16 ? " bf16" : " f32") + " S=" + std::to_string(k.seq) +
         " W=" + std::to_string(k.c.sliding_window) + " m=" + std::to_string(k.c.compress_rate_csa) +
         " m'=" + std::to_string(k.c.compress_rate_hca) + " k=" + std::to_string(k.c.index_topk);
}

}  // namespace dsv4::test
