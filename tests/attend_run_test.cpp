// The fused flash-decoding run (ops/attend_run.h) against a float64 plain
// loop: random shapes (heads not a multiple of 16, dims not a multiple of 16,
// partial runs n < 64, more keys than a run), rows taken from a window buffer
// (fp32) and from FP8-decoded entries, window-only, entries-only and mixed.
// Every kernel this build and CPU run (scalar, AVX2, AVX-512) is compared
// with the reference within 1e-5 and with the others bit for bit (the
// documented per-lane order), and runs computed in parallel give the same
// bits at 1, 2 and 3 threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ops/attend_run.h"
#include "ops/quant.h"

namespace dsv4 {
namespace {

using attn_run::Kernel;

struct Case {
  int64_t heads, dim, n, n_window;  // the first n_window keys from the window, the rest entries
};

struct Data {
  std::vector<float> q, window, entries;
  std::vector<const float*> rows;
  attn_run::Run run;
};

// Window rows fp32 as stored; entries as the deployment state stores them (E4M3 + bf16 RoPE dims), decoded.
Data make(const Case& c, std::mt19937& rng) {
  Data t;
  std::normal_distribution<float> v(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& x, size_t n, float s) {
    x.resize(n);
    for (float& e : x) e = v(rng) * s;
  };
  fill(t.q, c.heads * c.dim, 1.5f);
  fill(t.window, c.n_window * c.dim, 1.0f);
  fill(t.entries, (c.n - c.n_window) * c.dim, 1.0f);
  const int64_t rope = c.dim / 8, bytes = static_cast<int64_t>(quant::kv_row_bytes(c.dim, rope));
  std::vector<uint8_t> row(static_cast<size_t>(bytes));
  for (int64_t e = 0; e < c.n - c.n_window; ++e)
    quant::kv_row_encode(&t.entries[e * c.dim], c.dim, rope, row.data(), &t.entries[e * c.dim]);
  for (int64_t k = 0; k < c.n; ++k)
    t.rows.push_back(k < c.n_window ? &t.window[k * c.dim] : &t.entries[(k - c.n_window) * c.dim]);
  t.run.q = t.q.data(), t.run.heads = c.heads, t.run.dim = c.dim, t.run.rows = t.rows.data(), t.run.n = c.n;
  t.run.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dim)));
  return t;
}

struct Result {
  std::vector<float> o, m, l;
};

Result run_kernel(Kernel k, const attn_run::Run& r) {
  Result out{std::vector<float>(r.heads * r.dim, std::nanf("")), std::vector<float>(r.heads),
             std::vector<float>(r.heads)};
  std::vector<float> scratch(attn_run::scratch_floats(r), std::nanf(""));  // the kernels must not read it unwritten
  EXPECT_TRUE(attn_run::attend(k, r, scratch.data(), out.o.data(), out.m.data(), out.l.data()));
  return out;
}

// The plain loop in float64; the output normalised (o / l), which does not depend on the shift m.
void expect_near_reference(const attn_run::Run& r, const Result& got, const std::string& what) {
  for (int64_t h = 0; h < r.heads; ++h) {
    std::vector<double> x(r.n);
    double m = -std::numeric_limits<double>::infinity(), l = 0.0;
    for (int64_t k = 0; k < r.n; ++k) {
      double a = 0.0;
      for (int64_t d = 0; d < r.dim; ++d) a += static_cast<double>(r.q[h * r.dim + d]) * r.rows[k][d];
      m = std::max(m, x[k] = a * r.scale);
    }
    for (int64_t k = 0; k < r.n; ++k) l += x[k] = std::exp(x[k] - m);
    ASSERT_NEAR(got.m[h], m, 1e-5 * (1 + std::fabs(m))) << what << " head " << h;
    // The kernel's l is relative to its own fp32 m: rescale before comparing.
    const double l_got = got.l[h] * std::exp(static_cast<double>(got.m[h]) - m);
    ASSERT_NEAR(l_got, l, 1e-5 * l) << what << " head " << h;
    for (int64_t d = 0; d < r.dim; ++d) {
      double o = 0.0;
      for (int64_t k = 0; k < r.n; ++k) o += x[k] * r.rows[k][d];
      ASSERT_NEAR(got.o[h * r.dim + d] / got.l[h], o / l, 1e-5 * (1 + std::fabs(o / l)))
          << what << " head " << h << " dim " << d;
    }
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {64, 512, 64, 64}, {64, 512, 64, 0}, {64, 512, 64, 20},  {64, 512, 37, 5}, {64, 512, 1, 1},
      {64, 512, 1, 0},   {2, 136, 64, 30}, {2, 136, 9, 0},     {7, 40, 25, 25},  {16, 64, 63, 13},
      {20, 17, 6, 3},    {48, 96, 24, 24}, {33, 520, 100, 50}, {1, 8, 5, 2},     {128, 128, 64, 0},
  };
  return c;
}

std::string name(const Case& c, Kernel k) {
  const char* kn = k == Kernel::scalar ? "scalar" : k == Kernel::avx2 ? "avx2" : "avx512";
  return std::string(kn) + " H=" + std::to_string(c.heads) + " D=" + std::to_string(c.dim) +
         " n=" + std::to_string(c.n) + " window=" + std::to_string(c.n_window);
}

TEST(AttendRun, EveryKernelMatchesFloat64AndTheOthersBitForBit) {
  std::mt19937 rng(20);
  int ran_simd = 0;
  for (const Case& c : cases()) {
    const Data t = make(c, rng);
    const Result want = run_kernel(Kernel::scalar, t.run);
    expect_near_reference(t.run, want, name(c, Kernel::scalar));
    for (Kernel k : {Kernel::avx2, Kernel::avx512}) {
      if (!attn_run::available(k)) continue;
      ++ran_simd;
      const Result got = run_kernel(k, t.run);
      expect_near_reference(t.run, got, name(c, k));
      EXPECT_TRUE(same_bits(got.o, want.o) && same_bits(got.m, want.m) && same_bits(got.l, want.l))
          << name(c, k) << " differs from the scalar kernel's bits";
    }
  }
#if defined(__AVX2__) && defined(__FMA__)
  EXPECT_GE(ran_simd, static_cast<int>(cases().size())) << "the AVX2 kernel did not run in an AVX2 build";
#endif
  RecordProperty("simd_kernel_runs", ran_simd);
}

TEST(AttendRun, EmptyRunGivesNoMass) {
  const float q[4] = {1, 2, 3, 4};
  attn_run::Run r;
  r.q = q, r.heads = 2, r.dim = 2, r.n = 0;
  float o[4] = {7, 7, 7, 7}, m[2], l[2];
  attn_run::attend(r, o, m, l);
  for (float v : o) EXPECT_EQ(v, 0.0f);
  for (int h = 0; h < 2; ++h) {
    EXPECT_EQ(m[h], -std::numeric_limits<float>::infinity());
    EXPECT_EQ(l[h], 0.0f);
  }
}

// A query's runs split over the threads, as attend_split.cpp does: the bits
// of each run do not depend on which thread ran it or how many there are.
TEST(AttendRun, RunsOverThreadsAreThreadCountIndependent) {
  std::mt19937 rng(21);
  std::vector<Data> runs;
  for (int64_t i = 0; i < 12; ++i) {
    const int64_t n = i % 3 == 2 ? 64 - 5 * i : 64;  // full runs and a query's last, partial ones
    runs.push_back(make({64, 512, n, std::min<int64_t>(n, (i % 4) * 16)}, rng));
  }
  const int before = omp_get_max_threads();
  std::vector<Result> first;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    std::vector<Result> got(runs.size());
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < runs.size(); ++i) {
      const attn_run::Run& r = runs[i].run;
      got[i] = {std::vector<float>(r.heads * r.dim), std::vector<float>(r.heads), std::vector<float>(r.heads)};
      attn_run::attend(r, got[i].o.data(), got[i].m.data(), got[i].l.data());
    }
    if (first.empty()) first = got;
    for (size_t i = 0; i < runs.size(); ++i)
      EXPECT_TRUE(same_bits(got[i].o, first[i].o) && same_bits(got[i].m, first[i].m) && same_bits(got[i].l, first[i].l))
          << "run " << i << " at " << threads << " threads";
  }
  omp_set_num_threads(before);
  expect_near_reference(runs[2].run, first[2], "parallel run 2");
}

}  // namespace
}  // namespace dsv4
