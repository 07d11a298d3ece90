// dsv4::version(), build_isa(), blas_info(): what `dsv4 --version` and Python's
// dsv4.build_info() report.
#include "dsv4/version.h"

// OpenBLAS's own queries, declared weak: a build linked with another CBLAS (the
// reference netlib one, e.g. for ThreadSanitizer) has neither, and still links.
extern "C" {
char* openblas_get_config(void) __attribute__((weak));
int openblas_get_parallel(void) __attribute__((weak));
char* openblas_get_corename(void) __attribute__((weak));
}

namespace dsv4 {
namespace {

// Debian 12's OpenBLAS 0.3.21 predates Zen 4/5: it runs its AVX2 kernels
// ("Haswell", "Zen") there, and its AVX-512 ones only when asked for. Not
// switched here: another GEMM kernel rounds differently (docs/performance.md).
std::string avx512_hint() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!openblas_get_corename) return "";
  const std::string core = openblas_get_corename();
  const bool avx2_core = core == "Haswell" || core == "haswell" || core == "Zen" || core == "zen";
  if (avx2_core && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "; this CPU has AVX-512: OPENBLAS_CORETYPE=SkylakeX selects OpenBLAS's AVX-512 kernels";
#endif
  return "";
}

}  // namespace

std::string version() { return DSV4_VERSION; }

std::string build_isa() {
#if defined(__AVX2__) && defined(__FMA__)  // the test src/ops/vec.h makes
  return "x86-64-v3 (AVX2+FMA)";
#else
  return "portable";
#endif
}

std::string blas_info() {
  if (!openblas_get_config || !openblas_get_parallel) return "a CBLAS other than OpenBLAS";
  static const char* const kThreading[] = {"sequential", "pthreads", "OpenMP"};
  const int p = openblas_get_parallel();
  std::string s = openblas_get_config();  // "OpenBLAS 0.3.21 NO_AFFINITY USE_OPENMP Haswell MAX_THREADS=64"
  if (p >= 0 && p <= 2) s += std::string(" (") + kThreading[p] + ")";
  return s + avx512_hint();
}

}  // namespace dsv4
