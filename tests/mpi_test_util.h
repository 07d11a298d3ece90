// Shared by the MPI tests (dsv4_mpi_tests): the communicator's shape and a rank's rows.
#pragma once
#include <mpi.h>

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

}  // namespace dsv4::test
