// measure_roofline (dsv4/profile.h): what benchmarks compare a layer against.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dsv4/profile.h"
#include "ops/blas.h"
#include "ops/fp4_dot.h"
#include "ops/stream.h"

namespace dsv4 {

uint64_t xor_stream(const uint64_t* p, size_t words) {
#ifdef __AVX2__
  __m256i x[4] = {};  // four independent chains: the loads, not the xors, bound the loop
  size_t q = 0;
  for (; q + 16 <= words; q += 16)
    for (int l = 0; l < 4; ++l)
      x[l] = _mm256_xor_si256(x[l], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + q + 4 * l)));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_xor_si256(_mm256_xor_si256(x[0], x[1]), _mm256_xor_si256(x[2], x[3])));
  uint64_t total = lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
#else
  uint64_t total = 0;
  size_t q = 0;
#endif
  for (; q < words; ++q) total ^= p[q];
  return total;
}

double measure_read_bandwidth() {
  const size_t words = (size_t{256} << 20) / 8, chunks = 64;
  std::vector<uint64_t> src(words, 1);
  double best = 0;
  static std::atomic<uint64_t> sink;  // keeps the loads
  for (int i = 0; i < 3; ++i) {
    uint64_t total = 0;
    const double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static) reduction(^ : total)
    for (size_t k = 0; k < chunks; ++k) total ^= xor_stream(&src[k * words / chunks], words / chunks);
    const double s = omp_get_wtime() - t0;
    sink.store(total, std::memory_order_relaxed);
    best = std::max(best, 8.0 * words / s * 1e-9);
  }
  return best;
}

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
  r.read_gb_per_s = measure_read_bandwidth();
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
