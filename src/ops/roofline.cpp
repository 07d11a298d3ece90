// measure_roofline (dsv4/profile.h): what benchmarks compare a layer against.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "dsv4/profile.h"
#include "ops/blas.h"
#include "ops/fp4_dot.h"

namespace dsv4 {

Roofline measure_roofline() {
  Roofline r;
  const int64_t n = 2048;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  for (int i = 0; i < 3; ++i) {
    const double t0 = omp_get_wtime();
    gemm_nt(n, n, n, a.data(), n, b.data(), n, c.data(), n);
    r.sgemm_gflops = std::max(r.sgemm_gflops, 2.0 * n * n * n / (omp_get_wtime() - t0) * 1e-9);
  }
  const size_t bytes = size_t{256} << 20, chunks = 64;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  for (int i = 0; i < 3; ++i) {
    const double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < chunks; ++k) std::memcpy(&dst[k * bytes / chunks], &src[k * bytes / chunks], bytes / chunks);
    r.copy_gb_per_s = std::max(r.copy_gb_per_s, 2.0 * bytes / (omp_get_wtime() - t0) * 1e-9);
  }
  const bool vnni = fp4dot::avx512_vnni();
  for (int i = 0; i < 3; ++i) {
    double macs = 0;
    const double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : macs)
    macs += vnni ? fp4dot::dpbusd_peak(int64_t{1} << 20) : fp4dot::maddubs_peak(int64_t{1} << 20);
    r.int8_macs_per_s = std::max(r.int8_macs_per_s, macs / (omp_get_wtime() - t0));
  }
  if (r.int8_macs_per_s > 0) r.int8_instruction = vnni ? "vpdpbusd" : "vpmaddubsw";
  return r;
}

}  // namespace dsv4
