// Context parallelism from an installed dsv4 (find_package(dsv4 COMPONENTS mpi)):
// a conformance file's sequence split over the ranks, outputs compared with the
// file's. Exit 0 iff it passes. Usage: mpirun -np N mpi_consumer FILE.safetensors
#include <cstdio>

#include <dsv4/context_parallel.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1, rc = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  try {
    if (argc != 2) throw dsv4::Error("usage: mpi_consumer CONFORMANCE_FILE.safetensors");
    const dsv4::CaseReport r = dsv4::verify_case_context_parallel(argv[1], MPI_COMM_WORLD, dsv4::ContextLayout::zigzag);
    if (rank == 0) {
      std::printf("%s on %d ranks: %s, max |ours - ref| = %.3g\n", r.name.c_str(), ranks,
                  r.passed ? "passed" : "FAILED", r.max_abs);
      for (const std::string& f : r.failures) std::printf("  %s\n", f.c_str());
    }
    rc = r.passed ? 0 : 1;
  } catch (const dsv4::Error& e) {
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
  }
  MPI_Finalize();
  return rc;
}
