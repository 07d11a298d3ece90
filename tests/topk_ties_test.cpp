// Top-k ties (docs/numerics.md, "Top-k ties"): among equal index scores the
// lower entry index (the older window) is picked first. With one or two
// indexer heads, ReLU makes many scores exactly 0 (every head's dot product
// negative), so whole runs of entries tie; the rule must then decide the same
// way in the fast path (one-shot, decode, every thread count) and the naive
// reference, in both numerics.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "dsv4/layer.h"
#include "pipeline/pipeline.h"
#include "reference.h"
#include "test_util.h"

namespace dsv4 {
namespace {

// Row q of `topk` [S, width] follows the rule on `scores` [S, T]: best first,
// equal scores by ascending index, and no entry left out that the rule ranks
// above one taken. Returns how many of the row's picks were decided by a tie
// with an entry left out (0 if none).
int64_t check_rule(const Intermediates& d, int64_t q, int64_t eligible, int64_t k) {
  const int64_t n_t = d.index_scores.dim(1), width = d.topk.shape.at(1);
  const float* s = &d.index_scores.data[q * n_t];
  const int64_t* pick = &d.topk.data[q * width];
  auto before = [s](int64_t a, int64_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };
  const int64_t n = std::min(k, eligible);
  for (int64_t i = 0; i < width; ++i) EXPECT_EQ(pick[i] < 0, i >= n) << "query " << q << " slot " << i;
  for (int64_t i = 1; i < n; ++i) EXPECT_TRUE(before(pick[i - 1], pick[i])) << "query " << q << " slot " << i;
  std::vector<bool> taken(static_cast<size_t>(eligible));
  for (int64_t i = 0; i < n; ++i) taken[pick[i]] = true;
  int64_t decided = 0;
  for (int64_t e = 0; e < eligible && n > 0; ++e) {
    if (taken[e]) continue;
    EXPECT_TRUE(before(pick[n - 1], e)) << "query " << q << " leaves out entry " << e;
    decided += s[e] == s[pick[n - 1]];
  }
  return decided;
}

// A CSA layer whose indexer has `heads` heads, and an input of S tokens.
struct Case {
  Config c;
  LayerWeights w;
  Tensor x;
};
Case tie_case(int64_t heads, int64_t s, std::mt19937& rng) {
  Config c = test::small_config();
  c.index_n_heads = heads;
  c.index_topk = 5;
  c.compress_rate_csa = 2;
  return {c, test::random_weights(c, LayerType::csa, rng), test::random_tensor({1, s, c.hidden_size}, rng, 2.0f)};
}

TEST(TopkTies, LowerIndexFirstEverywhere) {
  std::mt19937 rng(20260101);
  int64_t tied_rows = 0, cases = 0;
  for (Numerics n : {Numerics::reference, Numerics::deployment})
    for (int64_t heads : {1, 2}) {
      for (int draw = 0; draw < 6; ++draw) {
        Case k = tie_case(heads, 48, rng);
        std::vector<Intermediates> ref_dbg;
        reference::forward(k.c, LayerType::csa, k.w, k.x, &ref_dbg, n);
        if (test::ambiguous_topk(k.c, LayerType::csa, ref_dbg)) continue;  // a near-tie of nonzero scores
        ++cases;
        const Layer layer(k.c, LayerType::csa, k.w, LayerOptions{WeightFormat::f32, n});
        SCOPED_TRACE(std::string(numerics_name(n)) + " H_I=" + std::to_string(heads) + " draw " + std::to_string(draw));
        std::vector<Intermediates> one_shot;
        for (int threads : {1, 2, 3}) {
          omp_set_num_threads(threads);
          std::vector<Intermediates> dbg;
          layer.forward(k.x, &dbg);
          if (one_shot.empty()) one_shot = dbg;
          EXPECT_EQ(dbg[0].topk.data, one_shot[0].topk.data) << threads << " threads";
        }
        omp_set_num_threads(2);
        // The reference picks the same entries in the same order.
        EXPECT_EQ(one_shot[0].topk.shape, ref_dbg[0].topk.shape);
        EXPECT_EQ(one_shot[0].topk.data, ref_dbg[0].topk.data);
        // Decode, token by token: the same rows.
        LayerState st = layer.new_state();
        const int64_t s = k.x.dim(1), d = k.c.hidden_size;
        for (int64_t t = 0; t < s; ++t) {
          Intermediates step;
          layer.forward(TensorView(k.x.ptr() + t * d, {1, d}), st, &step);
          const int64_t w = one_shot[0].topk.shape.at(1), ws = step.topk.shape.at(1);
          for (int64_t i = 0; i < w; ++i)
            EXPECT_EQ(i < ws ? step.topk.data[i] : -1, one_shot[0].topk.data[t * w + i]) << "decode " << t;
        }
        for (int64_t q = 0; q < s; ++q) {
          const int64_t eligible = (q + 1) / k.c.compress_rate_csa;
          check_rule(ref_dbg[0], q, eligible, k.c.index_topk);
          tied_rows += check_rule(one_shot[0], q, eligible, k.c.index_topk) > 0;
        }
      }
    }
  EXPECT_GE(cases, 16);
  EXPECT_GT(tied_rows, 50) << "too few ties decided the selection: the test would not see a change of rule";
}

// All indexer scores 0 (a zero query projection): the first k entries, in order.
TEST(TopkTies, AllScoresEqualPickTheFirstEntries) {
  std::mt19937 rng(7);
  Case k = tie_case(4, 30, rng);
  std::fill(k.w.indexer->q_b_proj.data.begin(), k.w.indexer->q_b_proj.data.end(), 0.0f);
  for (Numerics n : {Numerics::reference, Numerics::deployment}) {
    const Layer layer(k.c, LayerType::csa, k.w, LayerOptions{WeightFormat::f32, n});
    std::vector<Intermediates> dbg, ref;
    layer.forward(k.x, &dbg);
    reference::forward(k.c, LayerType::csa, k.w, k.x, &ref, n);
    const int64_t w = dbg[0].topk.shape.at(1);
    for (int64_t q = 0; q < k.x.dim(1); ++q)
      for (int64_t i = 0; i < w; ++i) {
        const int64_t want = i < std::min<int64_t>(5, (q + 1) / 2) ? i : -1;
        EXPECT_EQ(dbg[0].topk.data[q * w + i], want) << numerics_name(n) << " query " << q;
        EXPECT_EQ(ref[0].topk.data[q * w + i], want) << numerics_name(n) << " query " << q;
      }
  }
}

// select_topk on long rows (cut to the entries at or above a sampled bound
// first) equals a full stable sort by score, best first: scores from a few
// values (runs of ties at the k-th place), from many, rows just below and
// above the cut's length, k of 1 .. n.
TEST(TopkTies, SampledCutEqualsFullSort) {
  std::mt19937 rng(2026);
  std::vector<int32_t> idx;
  int64_t rows = 0;
  for (int64_t n : {20000, 1, 7, 40, 63, 64, 65, 500, 4095, 4096, 4097, 20000, 40})  // short after long: scratch reused
    for (int64_t k : {1, 3, 8, 512})
      for (int values : {2, 5, 1000, 0}) {  // 0: continuous
        std::uniform_int_distribution<int> pick(0, std::max(values - 1, 0));
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> s(static_cast<size_t>(n));
        for (float& v : s) v = values ? static_cast<float>(pick(rng)) * 0.25f : normal(rng);
        std::vector<int32_t> want(static_cast<size_t>(n));
        std::iota(want.begin(), want.end(), 0);
        std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
        const int64_t width = k + 2, kept = std::min(k, n);
        std::vector<int32_t> got(static_cast<size_t>(width));
        select_topk(s.data(), n, k, width, got.data(), idx);
        for (int64_t i = 0; i < width; ++i)
          ASSERT_EQ(got[i], i < kept ? want[i] : -1)
              << "n " << n << " k " << k << " values " << values << " slot " << i;
        ++rows;
      }
  EXPECT_EQ(rows, 13 * 4 * 4);
}

// select_topk_split (a decode step's long rows: one part per thread, merged)
// equals select_topk and a full stable sort by score at 1, 2 and 3 threads:
// rows just below and at the split's length, not a multiple of the sample
// stride, a million-token layer's 262,144 entries; k from 1 to as many as the
// samples (parts then have fewer samples than k); all scores tied, few values,
// many, continuous, infinities; a NaN score (both take the one-thread path).
TEST(TopkTies, SplitEqualsOneThread) {
  std::mt19937 rng(2027);
  std::vector<int32_t> idx, idx_split;
  const int threads = omp_get_max_threads();
  int64_t rows = 0;
  for (int64_t n : {32767, 32768, 32775, 100003, 262144})
    for (int64_t k : {1, 7, 512, 4096})
      for (int values : {1, 2, 5, 1000, 0, -1}) {  // 0: continuous; -1: continuous with infinities and a NaN
        std::uniform_int_distribution<int> pick(0, std::max(values - 1, 0));
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> s(static_cast<size_t>(n));
        for (float& v : s) v = values > 0 ? static_cast<float>(pick(rng)) * 0.25f : normal(rng);
        if (values < 0) {
          for (int64_t i = 3; i < n; i += n / 5) s[size_t(i)] = i % 2 ? INFINITY : -INFINITY;
          s[size_t(n / 2 + 1)] = NAN;
        }
        const int64_t width = k + 3, kept = std::min(k, n);
        std::vector<int32_t> want(static_cast<size_t>(width)), got(static_cast<size_t>(width));
        select_topk(s.data(), n, k, width, want.data(), idx);
        if (values >= 0 && n == 100003) {  // select_topk itself against the full sort (the rule)
          std::vector<int32_t> order(static_cast<size_t>(n));
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
          for (int64_t i = 0; i < kept; ++i) ASSERT_EQ(want[i], order[i]) << "n " << n << " k " << k << " slot " << i;
        }
        for (int t : {1, 2, 3}) {
          omp_set_num_threads(t);
          std::fill(got.begin(), got.end(), -7);
          select_topk_split(s.data(), n, k, width, got.data(), idx_split);
          omp_set_num_threads(threads);
          for (int64_t i = 0; i < width; ++i)
            ASSERT_EQ(got[i], want[i]) << "n " << n << " k " << k << " values " << values << " threads " << t
                                       << " slot " << i;
          ++rows;
        }
      }
  EXPECT_EQ(rows, 5 * 4 * 6 * 3);
}

}  // namespace
}  // namespace dsv4
