// RowStore's storage: growth by 1/8 (heap blocks below 1 MiB, mappings above) keeps the rows and zeroes
// the new ones, copies hold exactly their rows, moves and clear() keep or hand
// over the allocation, and equality compares fp32 rows as floats.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "dsv4/state.h"

namespace dsv4 {
namespace {

using F = RowStore::Format;

struct Shape {
  F format;
  int64_t width, rope;
};
const Shape kShapes[] = {{F::f32, 24, 0}, {F::kv_fp8, 512, 64}, {F::key_fp4, 128, 0}};

// Rows [0, n) of s put from seeded values; returns what read() gives back.
std::vector<float> fill(RowStore& s, int64_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(s.width()));
  for (int64_t i = 0; i < n; ++i) {
    for (float& v : x) v = nd(g);
    s.put(i, x.data());
  }
  std::vector<float> out(static_cast<size_t>(n * s.width()));
  s.read(0, n, out.data());
  return out;
}

bool zero_rows(const RowStore& s, int64_t i0, int64_t i1) {
  for (size_t b = static_cast<size_t>(i0) * s.row_bytes(); b < static_cast<size_t>(i1) * s.row_bytes(); ++b)
    if (s.data()[b] != 0) return false;
  return true;
}

TEST(RowStore, GrowthKeepsRowsZeroesNewOnesByAnEighth) {
  for (const Shape& sh : kShapes) {
    RowStore s(sh.format, sh.width, sh.rope);
    s.assign(1000);
    const std::vector<float> rows = fill(s, 1000, 7);
    RowStore c = s;  // a clone holds exactly its rows
    EXPECT_EQ(c.capacity_bytes(), 1000 * c.row_bytes());
    c.resize(1001);  // the first append after a clone grows by 1/8
    EXPECT_EQ(c.capacity_bytes(), 1125 * c.row_bytes());
    c.resize(1125);  // within the capacity: no growth
    EXPECT_EQ(c.capacity_bytes(), 1125 * c.row_bytes());
    c.resize(3000);  // past 9/8 of it: exactly what is asked
    EXPECT_EQ(c.capacity_bytes(), 3000 * c.row_bytes());
    std::vector<float> back(rows.size());
    c.read(0, 1000, back.data());
    EXPECT_EQ(0, std::memcmp(back.data(), rows.data(), rows.size() * sizeof(float)));
    EXPECT_TRUE(zero_rows(c, 1000, 3000));
    EXPECT_EQ(c.rows(), 3000);
  }
}

TEST(RowStore, ShrinkThenGrowZeroesAndClearKeepsTheAllocation) {
  for (const Shape& sh : kShapes) {
    RowStore s(sh.format, sh.width, sh.rope);
    s.assign(64);
    fill(s, 64, 3);
    const size_t cap = s.capacity_bytes();
    s.resize(10);
    s.resize(64);  // rows 10..63 were written before the shrink: zero again
    EXPECT_TRUE(zero_rows(s, 10, 64));
    EXPECT_FALSE(zero_rows(s, 0, 10));
    s.clear();
    EXPECT_EQ(s.rows(), 0);
    EXPECT_EQ(s.capacity_bytes(), cap);
    fill(s, 0, 1);
    s.assign(64);  // assign zero-fills every row
    EXPECT_TRUE(zero_rows(s, 0, 64));
  }
}

TEST(RowStore, CopiesAreIndependentMovesHandOver) {
  for (const Shape& sh : kShapes) {
    RowStore s(sh.format, sh.width, sh.rope);
    s.assign(50);
    fill(s, 50, 11);
    RowStore c = s;
    EXPECT_TRUE(c == s);
    std::vector<float> x(static_cast<size_t>(sh.width), 3.0f);
    s.put(5, x.data());
    EXPECT_FALSE(c == s);  // the copy kept its own bytes
    const uint8_t* p = s.data();
    RowStore m = std::move(s);
    EXPECT_EQ(m.data(), p);  // the allocation moved, not copied
    EXPECT_EQ(m.rows(), 50);
    RowStore a;
    a = c;
    EXPECT_TRUE(a == c);
    a = std::move(m);
    EXPECT_EQ(a.data(), p);
  }
}

TEST(RowStore, EqualityComparesFp32RowsAsFloatsCodedRowsAsBytes) {
  RowStore a(F::f32, 4, 0), b(F::f32, 4, 0);
  a.assign(1), b.assign(1);
  float x[4] = {1, 2, 3, 0.0f}, y[4] = {1, 2, 3, -0.0f};
  a.put(0, x), b.put(0, y);
  EXPECT_TRUE(a == b);  // -0 == +0, as std::vector<float> compared them
  x[1] = y[1] = std::numeric_limits<float>::quiet_NaN();
  a.put(0, x), b.put(0, y);
  EXPECT_FALSE(a == b);  // NaN != NaN
  RowStore c(F::kv_fp8, 512, 64), d(F::kv_fp8, 512, 64);
  c.assign(2), d.assign(2);
  EXPECT_TRUE(c == d);
  d.data()[3] = 1;
  EXPECT_FALSE(c == d);
  d.resize(3);
  EXPECT_FALSE(c == d);  // a row more
  EXPECT_FALSE(RowStore(F::f32, 4, 0) == RowStore(F::f32, 8, 0));
}

// GrowBytes across its 1 MiB line: a heap block becomes a mapping, a mapping
// grows by mremap, copies are exact and independent, moves hand over.
TEST(GrowBytes, KeepsBytesAcrossHeapAndMappingZeroesNewOnes) {
  using detail::GrowBytes;
  const auto pattern = [](size_t i) { return static_cast<uint8_t>(i * 131 + 7); };
  const auto holds = [&](const GrowBytes& g, size_t n) {
    for (size_t i = 0; i < n; ++i)
      if (g.data()[i] != pattern(i)) return false;
    return true;
  };
  const auto zero_from = [](const GrowBytes& g, size_t i0) {
    for (size_t i = i0; i < g.size(); ++i)
      if (g.data()[i] != 0) return false;
    return true;
  };
  GrowBytes g;
  size_t written = 0;
  for (const size_t n : {size_t{1000}, size_t{700'000}, size_t{1'500'000}, size_t{6'000'001}, size_t{9'999'999}}) {
    g.resize(n);  // heap, heap, mapping (copied once), mapping, mapping
    EXPECT_EQ(g.capacity(), n);
    EXPECT_TRUE(holds(g, written)) << n;
    EXPECT_TRUE(zero_from(g, written)) << n;
    for (size_t i = written; i < n; ++i) g.data()[i] = pattern(i);
    written = n;
    GrowBytes c = g;  // exact copy
    EXPECT_EQ(c.size(), n);
    EXPECT_EQ(c.capacity(), n);
    EXPECT_TRUE(holds(c, n));
    c.data()[0] ^= 1;
    EXPECT_TRUE(holds(g, n));  // independent
  }
  g.resize(10);
  g.resize(2'000'000);  // shrink then grow inside the capacity: zero again
  EXPECT_TRUE(holds(g, 10));
  EXPECT_TRUE(zero_from(g, 10));
  const uint8_t* p = g.data();
  GrowBytes m = std::move(g);
  EXPECT_EQ(m.data(), p);
  GrowBytes a;
  a.resize(5);
  a = std::move(m);  // a's old block goes with m
  EXPECT_EQ(a.data(), p);
  const GrowBytes& same = a;
  a = same;  // self-assignment keeps it
  EXPECT_EQ(a.size(), size_t{2'000'000});
  EXPECT_TRUE(holds(a, 10));
}

}  // namespace
}  // namespace dsv4
