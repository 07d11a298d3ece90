// Unit tests of the fast path's building blocks, each against a hand computation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "dsv4/layer.h"
#include "ops/norm.h"
#include "ops/vec.h"
#include "pipeline/pipeline.h"
#include "test_util.h"

namespace dsv4 {
namespace {

TEST(RmsNorm, WeightedAndUnweighted) {
  std::vector<float> x = {3, 4}, w = {2, 0.5f};
  rms_norm(x.data(), 2, w.data(), 0.0);
  EXPECT_NEAR(x[0], 2 * 3 / std::sqrt(12.5), 1e-6);
  EXPECT_NEAR(x[1], 0.5 * 4 / std::sqrt(12.5), 1e-6);
  std::vector<float> y = {1, 1, 1, 1};
  rms_norm(y.data(), 4, nullptr, 1.0);  // eps enters under the root
  EXPECT_NEAR(y[0], 1 / std::sqrt(2.0), 1e-6);
}

// Pools one channel by hand: softmax over (logit, value) slots.
double pooled(const std::vector<std::pair<double, double>>& slots) {
  double mx = -1e30, den = 0, num = 0;
  for (auto& s : slots) mx = std::max(mx, s.first);
  for (auto& s : slots) den += std::exp(s.first - mx), num += std::exp(s.first - mx) * s.second;
  return num / den;
}

TEST(Compressor, CsaOverlapPoolingWithAbsentWindowMinusOne) {
  std::mt19937 rng(1);
  Config c = test::small_config();
  const LayerWeights w = test::random_weights(c, LayerType::csa, rng);
  PackedLayer p = pack_layer(c, LayerType::csa, w);
  p.inv_freq.assign(p.inv_freq.size(), 0.0f);  // no rotation: compare pooling + norm only
  const int64_t m = c.compress_rate_csa, hd = c.head_dim, in_w = 2 * hd;
  const Tensor cz = test::random_tensor({2 * m, 2 * in_w}, rng);  // per token: C (2D) then Z (2D)
  CompressorState st = LayerState(c, LayerType::csa).compressor();
  ASSERT_EQ(compress_feed(p, *w.compressor, st, cz.ptr(), cz.ptr() + in_w, 2 * in_w, 2 * m), 2);
  const float* bias = w.compressor->position_bias.ptr();
  for (int64_t e = 0; e < 2; ++e) {
    std::vector<double> expect(hd);
    for (int64_t ch = 0; ch < hd; ++ch) {
      std::vector<std::pair<double, double>> slots;
      for (int64_t j = 0; j < m; ++j) {
        if (e == 1) {  // series A of window 0; window 0 itself has none
          const float* row = cz.ptr() + j * 2 * in_w;
          slots.push_back({row[in_w + ch] + bias[j * in_w + ch], row[ch]});
        }
        const float* row = cz.ptr() + (e * m + j) * 2 * in_w;
        slots.push_back({row[in_w + hd + ch] + bias[j * in_w + hd + ch], row[hd + ch]});
      }
      expect[ch] = pooled(slots);
    }
    double ss = 0;
    for (double v : expect) ss += v * v;
    std::vector<float> buf;
    const float* entries = st.entries.rows_f32(st.emitted, buf);
    for (int64_t ch = 0; ch < hd; ++ch)
      EXPECT_NEAR(entries[e * hd + ch],
                  expect[ch] / std::sqrt(ss / hd + c.rms_norm_eps) * w.compressor->kv_norm.data[ch], 1e-5)
          << "entry " << e << " channel " << ch;
  }
  EXPECT_TRUE(st.has_prev);
  EXPECT_EQ(st.pending, 0);
}

TEST(Indexer, SelectsOnlyEligibleEntriesBestFirst) {
  std::mt19937 rng(2);
  Config c = test::small_config();
  c.index_topk = 3;
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  const int64_t s = 30, m = c.compress_rate_csa, n_t = s / m;
  Intermediates d;
  LayerState st = layer.new_state();
  layer.forward(test::random_tensor({s, c.hidden_size}, rng), st, &d);
  ASSERT_EQ(d.topk.shape, (Shape{s, std::min<int64_t>(3, n_t)}));
  for (int64_t t = 0; t < s; ++t) {
    const int64_t eligible = (t + 1) / m, width = d.topk.shape[1];
    for (int64_t i = 0; i < width; ++i) {
      const int64_t e = d.topk.data[t * width + i];
      if (i >= eligible) {
        EXPECT_EQ(e, -1) << "query " << t << " slot " << i;
        continue;
      }
      ASSERT_GE(e, 0);
      EXPECT_LT(e, eligible);
      if (i > 0) {
        EXPECT_GE(d.index_scores.data[t * n_t + d.topk.data[t * width + i - 1]], d.index_scores.data[t * n_t + e]);
      }
      if (i != std::min(width, eligible) - 1) continue;
      for (int64_t o = 0; o < eligible; ++o) {  // nothing unselected beats the last selected one
        bool chosen = false;
        for (int64_t k = 0; k < width; ++k) chosen |= d.topk.data[t * width + k] == o;
        if (!chosen) {
          EXPECT_LE(d.index_scores.data[t * n_t + o], d.index_scores.data[t * n_t + e]);
        }
      }
    }
  }
}

TEST(Attention, SinkTakesMassButAddsNoValue) {
  std::mt19937 rng(3);
  Config c = test::small_config();
  c.num_attention_heads = 2;
  const LayerWeights w = [&] {
    LayerWeights x = test::random_weights(c, LayerType::sliding, rng);
    x.sinks.data = {0.5f, -2.0f};
    return x;
  }();
  const PackedLayer p = pack_layer(c, LayerType::sliding, w);
  const int64_t hd = c.head_dim;
  const Tensor q = test::random_tensor({2, hd}, rng), k = test::random_tensor({2, hd}, rng);
  std::vector<float> o(2 * hd);
  KeySet ks;
  ks.window = k.ptr();
  ks.n_window = 2;
  attend(p, q.ptr(), ks, 0, 2, o.data());
  for (int h = 0; h < 2; ++h) {
    double l[2];
    for (int j = 0; j < 2; ++j) {
      l[j] = 0;
      for (int64_t i = 0; i < hd; ++i) l[j] += double(q.data[h * hd + i]) * k.data[j * hd + i];
      l[j] /= std::sqrt(double(hd));
    }
    const double den = std::exp(l[0]) + std::exp(l[1]) + std::exp(double(w.sinks.data[h]));
    for (int64_t i = 0; i < hd; ++i)
      EXPECT_NEAR(o[h * hd + i], (std::exp(l[0]) * k.data[i] + std::exp(l[1]) * k.data[hd + i]) / den, 1e-5);
  }
}

TEST(OutputProjection, GroupsMapThroughTheirOwnBlock) {
  std::mt19937 rng(4);
  Config c = test::small_config();
  c.qk_rope_head_dim = 2;
  const LayerWeights w = test::random_weights(c, LayerType::sliding, rng);
  const PackedLayer p = pack_layer(c, LayerType::sliding, w);
  const int64_t hd = c.head_dim, hdall = c.num_attention_heads * hd, g = c.o_groups, dg = c.o_lora_rank, gw = hdall / g;
  Tensor o = test::random_tensor({1, hdall}, rng);
  const Tensor o_in = o;
  const int64_t pos = 0;  // angle 0: de-rotation is the identity
  std::vector<float> out(c.hidden_size);
  std::vector<float> grouped(g * dg);
  output_project(p, o.ptr(), 1, &pos, {RowGroup{0, 1, false}}, grouped.data(), out.data());
  for (int64_t j = 0; j < c.hidden_size; ++j) {
    double acc = 0;
    for (int64_t gi = 0; gi < g; ++gi)
      for (int64_t r = 0; r < dg; ++r) {
        double mid = 0;
        for (int64_t i = 0; i < gw; ++i)
          mid += double(o_in.data[gi * gw + i]) * w.o_a_proj.data[(gi * dg + r) * gw + i];
        acc += mid * w.o_b_proj.data[j * g * dg + gi * dg + r];
      }
    EXPECT_NEAR(out[j], acc, 1e-4);
  }
}

}  // namespace
}  // namespace dsv4

namespace dsv4 {
namespace {

// The softmax's vector exp: within 2 ulp-ish of std::exp over the range a
// shifted logit takes (<= 0), exactly 0 far below, and the sum in fixed order.
TEST(VecExp, MatchesStdExpAndSums) {
  std::vector<float> x;
  for (float v = -100.0f; v <= 0.0f; v += 0.0137f) x.push_back(v);
  std::vector<float> y = x;
  const float sum = vec::exp_sum(y.data(), static_cast<int64_t>(y.size()), 0.0f);
  double ref_sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = std::exp(static_cast<double>(x[i]));
    ref_sum += e;
    if (x[i] < -87.3f) {
      EXPECT_LE(y[i], 1e-37f) << x[i];
      continue;
    }
    EXPECT_NEAR(y[i], e, 3e-7 * e) << x[i];
  }
  EXPECT_NEAR(sum, ref_sum, 1e-6 * ref_sum);
  std::vector<float> z = {1, -3, 2, 0.5f, 7, -1, 4, 2, 9};
  EXPECT_FLOAT_EQ(vec::scale_max(z.data(), 0.5f, 9, -100.0f), 4.5f);
  EXPECT_FLOAT_EQ(z[0], 0.5f);
}

}  // namespace
}  // namespace dsv4

namespace dsv4 {
namespace {

// Non-finite inputs are reported (count and first index) before any state moves.
TEST(Inputs, NonFiniteAndBadShapesAreReportedNotComputed) {
  std::mt19937 rng(5);
  const Config c = test::small_config();
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  Tensor x = test::random_tensor({Layer::kPrefillChunk + 9, c.hidden_size}, rng);
  x.data[(Layer::kPrefillChunk + 3) * c.hidden_size + 1] = std::nanf("");
  x.data[7] = INFINITY;
  LayerState st = layer.new_state();
  try {
    layer.forward(x, st);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("2 non-finite value(s), first at flat index 7"));
  }
  EXPECT_EQ(st.position(), 0);  // the long input would have run in pieces: none ran
  EXPECT_THROW(layer.forward(Tensor({2, 3, c.hidden_size + 1})), Error);
  EXPECT_THROW(layer.forward(Tensor({3, c.hidden_size - 1}), st), Error);
}

}  // namespace
}  // namespace dsv4
