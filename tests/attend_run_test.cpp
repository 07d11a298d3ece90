// The fused flash-decoding run (ops/attend_run.h) against a float64 plain
// loop: random shapes (heads not a multiple of 16, dims not a multiple of 16,
// partial runs n < 64, more keys than a run), rows taken from a window buffer
// (fp32) and from FP8-decoded entries, window-only, entries-only and mixed.
// Every kernel this build and CPU run (scalar, AVX2, AVX-512) is compared
// with the reference within 1e-5 and with the others bit for bit (the
// documented per-lane order), and runs computed in parallel give the same
// bits at 1, 2 and 3 threads. The grouped path (a query's keys in runs of
// 64, consecutive runs in groups continuing one state, the groups merged with
// a sink) is checked likewise: group sizes 1, 2, 3 and all runs, n not a
// multiple of 64, heads not a multiple of 16.
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
  std::vector<float> q, qt, window, entries;
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
  t.qt.resize(attn_run::query_floats(c.heads, c.dim));
  attn_run::transpose_query(t.q.data(), c.heads, c.dim, t.qt.data());
  t.run.qt = t.qt.data(), t.run.heads = c.heads, t.run.dim = c.dim, t.run.rows = t.rows.data(), t.run.n = c.n;
  t.run.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dim)));
  return t;
}

struct Result {
  std::vector<float> o, m, l;
};

// A state of NaNs (a fresh run must not read it), or start()'s.
Result started(const attn_run::Run& r, bool start = true) {
  Result out{std::vector<float>(r.heads * r.dim, std::nanf("")), std::vector<float>(r.heads, std::nanf("")),
             std::vector<float>(r.heads, std::nanf(""))};
  if (start) attn_run::start(r.heads, r.dim, out.o.data(), out.m.data(), out.l.data());
  return out;
}

// Keys [k0, k1) of r as one run, continuing `state` (fresh: writing it).
void continue_run(Kernel k, const attn_run::Run& r, int64_t k0, int64_t k1, Result& state, bool fresh = false) {
  attn_run::Run part = r;
  part.rows = r.rows + k0, part.n = k1 - k0, part.fresh = fresh;
  std::vector<float> scratch(attn_run::scratch_floats(part), std::nanf(""));  // the kernels must not read it unwritten
  EXPECT_TRUE(attn_run::attend(k, part, scratch.data(), state.o.data(), state.m.data(), state.l.data()));
}

Result run_kernel(Kernel k, const attn_run::Run& r) {
  Result out = started(r);
  continue_run(k, r, 0, r.n, out);
  return out;
}

// The plain loop in float64; the output normalised (o / l), which does not depend on the shift m.
void expect_near_reference(const attn_run::Run& r, const Result& got, const std::string& what) {
  const int64_t hp = attn_run::padded_heads(r.heads);
  for (int64_t h = 0; h < r.heads; ++h) {
    std::vector<double> x(r.n);
    double m = -std::numeric_limits<double>::infinity(), l = 0.0;
    for (int64_t k = 0; k < r.n; ++k) {
      double a = 0.0;
      for (int64_t d = 0; d < r.dim; ++d) a += static_cast<double>(r.qt[d * hp + h]) * r.rows[k][d];
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

TEST(AttendRun, EmptyRunLeavesTheState) {
  const float qt[32] = {1, 2, 3, 4};
  attn_run::Run r;
  r.qt = qt, r.heads = 2, r.dim = 2, r.n = 0;
  float o[4] = {7, 7, 7, 7}, m[2], l[2];
  attn_run::start(2, 2, o, m, l);
  attn_run::attend(r, o, m, l);
  for (float v : o) EXPECT_EQ(v, 0.0f);
  for (int h = 0; h < 2; ++h) {
    EXPECT_EQ(m[h], -std::numeric_limits<float>::infinity());
    EXPECT_EQ(l[h], 0.0f);
  }
  o[0] = 5, m[0] = 1, l[0] = 2;
  attn_run::attend(r, o, m, l);
  EXPECT_EQ(o[0], 5.0f);
  EXPECT_EQ(m[0], 1.0f);
  EXPECT_EQ(l[0], 2.0f);
  r.fresh = true;  // an empty fresh run leaves start()'s state
  attn_run::attend(r, o, m, l);
  EXPECT_EQ(o[0], 0.0f);
  EXPECT_EQ(m[0], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(l[0], 0.0f);
}

TEST(AttendRun, EveryTranspositionIsTheScalarOne) {
  std::mt19937 rng(22);
  for (const Case& c : cases()) {
    const Data t = make(c, rng);
    std::vector<float> want(attn_run::query_floats(c.heads, c.dim), std::nanf(""));
    attn_run::transpose_scalar(t.q.data(), c.heads, c.dim, want.data());
    EXPECT_TRUE(same_bits(t.qt, want)) << name(c, Kernel::scalar);
    std::vector<float> got(want.size(), std::nanf(""));
    if (attn_run::transpose_avx2(t.q.data(), c.heads, c.dim, got.data())) {
      EXPECT_TRUE(same_bits(got, want)) << name(c, Kernel::avx2);
    }
    std::fill(got.begin(), got.end(), std::nanf(""));
    if (attn_run::available(Kernel::avx512) && attn_run::transpose_avx512(t.q.data(), c.heads, c.dim, got.data())) {
      EXPECT_TRUE(same_bits(got, want)) << name(c, Kernel::avx512);
    }
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
      got[i] = started(r);
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

// A query's keys as pipeline/attend_split.cpp runs them: runs of 64, g
// consecutive runs per group continuing one state (one part per group), the
// groups' parts merged with the sink, heads in blocks of `block`; each
// group's first run fresh (as attend_split.cpp) or continuing start()'s state.
std::vector<float> grouped(Kernel k, const attn_run::Run& r, int64_t g, const std::vector<float>& sinks,
                           int64_t block = 1 << 20, bool fresh = true) {
  const int64_t runs = std::max<int64_t>(1, (r.n + 63) / 64), groups = (runs + g - 1) / g, hd = r.heads * r.dim;
  std::vector<float> o(groups * hd), m(groups * r.heads), l(groups * r.heads);
#pragma omp parallel for schedule(dynamic)
  for (int64_t s = 0; s < groups; ++s) {
    Result st = started(r, !fresh);
    for (int64_t run = s * g; run < std::min(runs, (s + 1) * g); ++run)
      continue_run(k, r, run * 64, std::min(r.n, run * 64 + 64), st, fresh && run == s * g);
    std::copy(st.o.begin(), st.o.end(), o.begin() + s * hd);
    std::copy(st.m.begin(), st.m.end(), m.begin() + s * r.heads);
    std::copy(st.l.begin(), st.l.end(), l.begin() + s * r.heads);
  }
  attn_run::Parts parts;
  parts.o = o.data(), parts.m = m.data(), parts.l = l.data(), parts.groups = groups, parts.heads = r.heads;
  parts.dim = r.dim;
  std::vector<float> out(hd, std::nanf(""));
  for (int64_t h = 0; h < r.heads; h += block)
    attn_run::merge(parts, sinks.data(), h, std::min(r.heads, h + block), out.data());
  return out;
}

// Softmax with a sink over all keys, in float64.
void expect_near_attention(const attn_run::Run& r, const std::vector<float>& sinks, const std::vector<float>& got,
                           const std::string& what) {
  const int64_t hp = attn_run::padded_heads(r.heads);
  for (int64_t h = 0; h < r.heads; ++h) {
    std::vector<double> x(r.n);
    double m = sinks[h], z = 0.0;
    for (int64_t k = 0; k < r.n; ++k) {
      double a = 0.0;
      for (int64_t d = 0; d < r.dim; ++d) a += static_cast<double>(r.qt[d * hp + h]) * r.rows[k][d];
      m = std::max(m, x[k] = a * r.scale);
    }
    z = std::exp(sinks[h] - m);
    for (int64_t k = 0; k < r.n; ++k) z += x[k] = std::exp(x[k] - m);
    for (int64_t d = 0; d < r.dim; ++d) {
      double o = 0.0;
      for (int64_t k = 0; k < r.n; ++k) o += x[k] * r.rows[k][d];
      ASSERT_NEAR(got[h * r.dim + d], o / z, 1e-5 * (1 + std::fabs(o / z))) << what << " head " << h << " dim " << d;
    }
  }
}

TEST(AttendRun, GroupedRunsMatchFloat64AndAreKernelAndThreadCountIndependent) {
  std::mt19937 rng(23);
  const std::vector<Case> shapes = {
      {64, 512, 300, 128}, {20, 136, 129, 40}, {33, 520, 65, 10}, {64, 512, 64, 0}, {7, 40, 200, 0}, {1, 8, 5, 2},
  };
  const int before = omp_get_max_threads();
  for (const Case& c : shapes) {
    const Data t = make(c, rng);
    std::vector<float> sinks(c.heads);
    for (float& v : sinks) v = std::normal_distribution<float>(0.0f, 2.0f)(rng);
    const int64_t runs = std::max<int64_t>(1, (c.n + 63) / 64);
    for (int64_t g : {int64_t{1}, int64_t{2}, int64_t{3}, runs}) {
      const std::string what = name(c, Kernel::scalar) + " group=" + std::to_string(g);
      omp_set_num_threads(1);
      const std::vector<float> want = grouped(Kernel::scalar, t.run, g, sinks);
      expect_near_attention(t.run, sinks, want, what);
      EXPECT_TRUE(same_bits(grouped(Kernel::scalar, t.run, g, sinks, 5), want)) << what << " merged in head blocks";
      EXPECT_TRUE(same_bits(grouped(Kernel::scalar, t.run, g, sinks, 1 << 20, false), want)) << what << " from start()";
      for (Kernel k : {Kernel::scalar, Kernel::avx2, Kernel::avx512}) {
        if (!attn_run::available(k)) continue;
        for (int threads : {1, 2, 3}) {
          omp_set_num_threads(threads);
          EXPECT_TRUE(same_bits(grouped(k, t.run, g, sinks), want))
              << name(c, k) << " group=" << g << " at " << threads << " threads";
          EXPECT_TRUE(same_bits(grouped(k, t.run, g, sinks, 1 << 20, false), want))
              << name(c, k) << " group=" << g << " at " << threads << " threads, from start()";
        }
      }
    }
  }
  omp_set_num_threads(before);
}

}  // namespace
}  // namespace dsv4
