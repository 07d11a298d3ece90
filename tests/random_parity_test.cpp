// Fast path == naive reference on many random configurations and shapes:
// odd S, S = 1, S < W, S < m, T < k and T > k, batch 1-3, every layer type,
// several thread counts (and bit-identical results across thread counts).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "common/dtype.h"
#include "dsv4/conformance.h"
#include "dsv4/layer.h"
#include "reference.h"
#include "test_util.h"

namespace dsv4 {
namespace {

struct Case {
  Config c;
  LayerType type;
  int64_t batch, seq;
};

Case random_case(std::mt19937& rng, LayerType type) {
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  Case k{test::random_config(rng), type, 1 + static_cast<int64_t>(rng() % 3), 0};
  // Short and long sequences: S = 1, S < W, S < m, odd, T both below and above k.
  k.seq = pick({1, 2, 3, 5, 7}) + static_cast<int64_t>(rng() % 2 ? rng() % 40 : 0);
  return k;
}

// Type and thread count vary independently: every type meets the reference at
// 1, 2 and 3 threads (cases cycle through the 9 pairs).
TEST(RandomParity, FastEqualsReferenceOnManyShapes) {
  std::mt19937 rng(20261126);
  const LayerType types[] = {LayerType::sliding, LayerType::csa, LayerType::hca};
  int cases = 0, redraws = 0;
  std::map<std::pair<LayerType, int>, int> met;  // (type, threads) -> cases
  const int saved_threads = omp_get_max_threads();
  while (cases < 240) {
    Case k = random_case(rng, types[cases % 3]);
    ASSERT_NO_THROW(k.c.validate());
    const LayerWeights w = test::random_weights(k.c, k.type, rng);
    const Tensor x = test::random_tensor({k.batch, k.seq, k.c.hidden_size}, rng, 2.0f);
    std::vector<Intermediates> rdbg;
    const Tensor ref = reference::forward(k.c, k.type, w, x, &rdbg);
    if (test::ambiguous_topk(k.c, k.type, rdbg)) {  // redraw near-ties at the k boundary
      ASSERT_LT(++redraws, 100);
      continue;
    }
    const int threads = 1 + (cases / 3) % 3;
    ++cases;
    ++met[{k.type, threads}];
    const Layer layer(k.c, k.type, w);
    omp_set_num_threads(threads);
    std::vector<Intermediates> dbg;
    const Tensor y = layer.forward(x, &dbg);
    omp_set_num_threads(saved_threads);
    SCOPED_TRACE("case " + std::to_string(cases) + " type " + std::string(layer_type_name(k.type)) + " B=" +
                 std::to_string(k.batch) + " S=" + std::to_string(k.seq) + " threads=" + std::to_string(threads));
    ASSERT_TRUE(test::all_close(y, ref, 1e-5, 1e-5));
    for (size_t b = 0; b < dbg.size(); ++b) {
      EXPECT_TRUE(test::all_close(dbg[b].q, rdbg[b].q, 1e-5, 1e-5));
      EXPECT_TRUE(test::all_close(dbg[b].kv, rdbg[b].kv, 1e-5, 1e-5));
      EXPECT_TRUE(test::all_close(dbg[b].compressed_kv, rdbg[b].compressed_kv, 1e-5, 1e-5));
      if (k.type != LayerType::csa) continue;
      EXPECT_TRUE(test::all_close(dbg[b].index_scores, rdbg[b].index_scores, 1e-5, 1e-5));
      ASSERT_EQ(dbg[b].topk.shape, rdbg[b].topk.shape);
      for (int64_t t = 0; t < k.seq; ++t)
        EXPECT_EQ(topk_set(dbg[b].topk, t), topk_set(rdbg[b].topk, t)) << "query " << t;
    }
  }
  EXPECT_EQ(cases, 240);
  for (LayerType t : types)
    for (int threads : {1, 2, 3})
      EXPECT_GE((met[{t, threads}]), 20) << layer_type_name(t) << " at " << threads << " threads";
}

TEST(RandomParity, BitIdenticalForAnyThreadCount) {
  std::mt19937 rng(7);
  const int saved_threads = omp_get_max_threads();
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    Config c = test::small_config();
    const Layer layer(c, t, test::random_weights(c, t, rng));
    const Tensor x = test::random_tensor({2, 67, c.hidden_size}, rng, 2.0f);
    omp_set_num_threads(1);
    const Tensor y1 = layer.forward(x);
    for (int threads : {2, 3, 4}) {
      omp_set_num_threads(threads);
      const Tensor y = layer.forward(x);
      EXPECT_EQ(0, std::memcmp(y.ptr(), y1.ptr(), y1.data.size() * sizeof(float)))
          << layer_type_name(t) << " with " << threads << " threads";
    }
  }
  omp_set_num_threads(saved_threads);
}

}  // namespace
}  // namespace dsv4

namespace dsv4 {
namespace {

// Past Layer::kPrefillChunk tokens a one-shot forward runs in pieces, and a
// decode step with more than one key tile (512 entries) spreads the indexer's
// tiles over the threads: both must still match the reference.
TEST(RandomParity, LongSequencesAndManyEntries) {
  std::mt19937 rng(11);
  // One entry per token (CSA rate 1): T > 512 quickly.
  const Config c = test::small_config({.window = 4, .rate_csa = 1, .rate_hca = 2, .topk = 6});
  const int64_t s = Layer::kPrefillChunk + 77, decoded = 5;
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    LayerWeights w;
    Tensor x, ref;
    for (int draw = 0;; ++draw) {  // redraw near-ties at the k boundary, as the golden generator does
      ASSERT_LT(draw, 40);
      w = test::random_weights(c, t, rng);
      x = test::random_tensor({1, s, c.hidden_size}, rng, 2.0f);
      std::vector<Intermediates> rdbg;
      ref = reference::forward(c, t, w, x, &rdbg);
      if (!test::ambiguous_topk(c, t, rdbg)) break;
    }
    const Layer layer(c, t, w);
    EXPECT_TRUE(test::all_close(layer.forward(x), ref, 1e-5, 1e-5)) << layer_type_name(t) << " one-shot";

    LayerState st = layer.new_state();
    const int64_t d = c.hidden_size, pre = s - decoded;
    Tensor y = layer.forward(Tensor({pre, d}, std::vector<float>(x.data.begin(), x.data.begin() + pre * d)), st);
    for (int64_t i = pre; i < s; ++i) {
      const Tensor yi =
          layer.forward(Tensor({1, d}, std::vector<float>(x.data.begin() + i * d, x.data.begin() + (i + 1) * d)), st);
      y.data.insert(y.data.end(), yi.data.begin(), yi.data.end());
    }
    EXPECT_TRUE(test::all_close(y.ptr(), Tensor({s * d}, ref.data), 1e-5, 1e-5)) << layer_type_name(t) << " decode";
  }
}

}  // namespace
}  // namespace dsv4

namespace dsv4 {
namespace {

// bf16 weights are widened exactly inside the GEMMs, so a bf16 layer equals an
// fp32 layer whose projection matrices were rounded to bf16, bit for bit, on
// both GEMM paths (short chunks row-invariant, long ones BLAS).
TEST(WeightFormat, Bf16EqualsF32OnRoundedWeightsAndHalvesTheMatrices) {
  std::mt19937 rng(21);
  const Config c = test::small_config();
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    const LayerWeights w = test::random_weights(c, t, rng);
    LayerWeights rounded = w;
    auto round = [](Tensor& x) {
      for (float& v : x.data) v = bf16_to_f32(f32_to_bf16(v));
    };
    for (Tensor* x : {&rounded.q_a_proj, &rounded.q_b_proj, &rounded.kv_proj, &rounded.o_a_proj, &rounded.o_b_proj})
      round(*x);
    if (rounded.compressor) round(rounded.compressor->kv_proj), round(rounded.compressor->gate_proj);
    if (rounded.indexer) {
      round(rounded.indexer->compressor.kv_proj), round(rounded.indexer->compressor.gate_proj);
      round(rounded.indexer->q_b_proj), round(rounded.indexer->weights_proj);
    }
    const Layer half(c, t, w, LayerOptions{WeightFormat::bf16}), full(c, t, rounded);
    EXPECT_LT(half.weight_bytes(), full.weight_bytes() * 0.55) << layer_type_name(t);
    for (int64_t s : {5, 50}) {  // row-invariant and BLAS paths
      const Tensor x = test::random_tensor({2, s, c.hidden_size}, rng, 2.0f);
      const Tensor a = half.forward(x), b = full.forward(x);
      EXPECT_EQ(0, std::memcmp(a.ptr(), b.ptr(), a.data.size() * sizeof(float))) << layer_type_name(t) << " S=" << s;
    }
  }
}

}  // namespace
}  // namespace dsv4
