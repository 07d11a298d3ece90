// Deployment numerics, fast path == naive reference (to 1e-5) over random
// configurations: several FP8 blocks with a shorter last one, FP4 blocks,
// all-zero blocks, blocks whose small values fall to subnormal codes, long
// inputs split into prefill pieces, and decode. Plus what the option changes.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "dsv4/conformance.h"
#include "dsv4/layer.h"
#include "reference.h"
#include "test_util.h"

namespace dsv4 {
namespace {

constexpr Numerics kDeploy = Numerics::deployment;
// Two fp32 implementations a few ulp apart may round a value within this
// relative distance of a rounding decision differently (reference/numerics.h).
constexpr double kTieMargin = 5e-7;

// A random small config whose rows span several FP8 blocks (64) and FP4 blocks (32) at times.
Config deploy_config(std::mt19937& rng) {
  Config c = test::random_config(rng);
  if (rng() % 3 == 0) c.head_dim = rng() % 2 ? 80 : 136;  // 2 blocks with a short last one, or 2 full ones
  const int64_t r = c.qk_rope_head_dim;
  c.index_head_dim = std::max<int64_t>(r, int64_t{8} << (rng() % 4));  // 8 .. 64: a power of two >= R
  return c;
}

// kv_norm weights that make every kv row's first FP8 block all zeros (`zero`),
// or all but one value 1e-5 times smaller: those get subnormal codes or round to 0.
void shape_blocks(LayerWeights& w, bool zero) {
  auto apply = [zero](Tensor& norm) {
    const int64_t n = std::min<int64_t>(64, norm.numel());
    for (int64_t i = 0; i < n; ++i) norm.data[i] = zero ? 0.0f : (i == 1 ? 1.0f : 1e-5f * norm.data[i]);
  };
  apply(w.kv_norm);
  if (w.compressor) apply(w.compressor->kv_norm);
}

struct Drawn {
  Config c;
  LayerType type;
  LayerWeights w;
  Tensor x, ref;
  std::vector<Intermediates> dbg;
};

// Draws weights and input until the reference run is unambiguous (no rounding
// or top-k decision within the margin); false after too many tries.
bool draw(std::mt19937& rng, Drawn& k, int64_t batch, int64_t seq, int blocks, int& redraws) {
  for (int tries = 0; tries < 50; ++tries) {
    k.w = test::random_weights(k.c, k.type, rng);
    if (blocks) shape_blocks(k.w, blocks == 1);
    k.x = test::random_tensor({batch, seq, k.c.hidden_size}, rng, 2.0f);
    double tie = 0;
    k.ref = reference::forward(k.c, k.type, k.w, k.x, &k.dbg, kDeploy, &tie);
    if (tie > kTieMargin && !test::ambiguous_topk(k.c, k.type, k.dbg)) return true;
    ++redraws;
  }
  return false;
}

::testing::AssertionResult same_sets(const TensorI64& a, const TensorI64& b) {
  if (a.shape != b.shape) return ::testing::AssertionFailure() << "top-k shapes differ";
  for (int64_t t = 0; t < a.shape[0]; ++t)
    if (topk_set(a, t) != topk_set(b, t))
      return ::testing::AssertionFailure() << "query " << t << " selects other entries";
  return ::testing::AssertionSuccess();
}

TEST(Deployment, FastEqualsReferenceOnManyShapes) {
  std::mt19937 rng(20261127);
  const LayerType types[] = {LayerType::sliding, LayerType::csa, LayerType::hca};
  int cases = 0, redraws = 0;
  for (int i = 0; cases < 150; ++i) {
    Drawn k{deploy_config(rng), types[i % 3], {}, {}, {}, {}};
    const int64_t batch = 1 + static_cast<int64_t>(rng() % 3);
    const int64_t seq = 1 + static_cast<int64_t>(rng() % 2 ? rng() % 45 : rng() % 6);
    const int blocks = static_cast<int>(rng() % 4) % 3;  // 0: as drawn, 1: zero blocks, 2: subnormal codes
    ASSERT_TRUE(draw(rng, k, batch, seq, blocks, redraws)) << "no unambiguous draw";
    ++cases;
    const Layer layer(k.c, k.type, k.w, LayerOptions{WeightFormat::f32, kDeploy});
    std::vector<Intermediates> dbg;
    const Tensor y = layer.forward(k.x, &dbg);
    SCOPED_TRACE("case " + std::to_string(cases) + " " + std::string(layer_type_name(k.type)) +
                 " D=" + std::to_string(k.c.head_dim) + " D_I=" + std::to_string(k.c.index_head_dim) +
                 " B=" + std::to_string(batch) + " S=" + std::to_string(seq) + " blocks " + std::to_string(blocks));
    ASSERT_TRUE(test::all_close(y, k.ref, 1e-5, 1e-5));
    for (size_t b = 0; b < dbg.size(); ++b) {
      EXPECT_TRUE(test::all_close(dbg[b].kv, k.dbg[b].kv, 1e-5, 1e-5));
      EXPECT_TRUE(test::all_close(dbg[b].compressed_kv, k.dbg[b].compressed_kv, 1e-5, 1e-5));
      if (k.type != LayerType::csa) continue;
      EXPECT_TRUE(test::all_close(dbg[b].indexer_q, k.dbg[b].indexer_q, 1e-5, 1e-5));
      EXPECT_TRUE(test::all_close(dbg[b].indexer_kv, k.dbg[b].indexer_kv, 1e-5, 1e-5));
      EXPECT_TRUE(test::all_close(dbg[b].index_scores, k.dbg[b].index_scores, 1e-5, 1e-5));
      EXPECT_TRUE(same_sets(dbg[b].topk, k.dbg[b].topk));
    }
    if (batch == 1) {  // token by token through a state: the coded ring and entries
      LayerState st = layer.new_state();
      const int64_t dd = k.c.hidden_size;
      for (int64_t t = 0; t < seq; ++t) {
        const Tensor yt = layer.forward(
            Tensor({1, dd}, std::vector<float>(k.x.data.begin() + t * dd, k.x.data.begin() + (t + 1) * dd)), st);
        ASSERT_TRUE(test::all_close(
            yt.ptr(), Tensor({dd}, std::vector<float>(k.ref.data.begin() + t * dd, k.ref.data.begin() + (t + 1) * dd)),
            1e-5, 1e-5))
            << "decoded token " << t;
      }
    }
    if (blocks == 1) {
      EXPECT_EQ(dbg[0].kv.data[0], 0.0f);  // the zero block really is zero
    }
  }
  std::printf("%d cases, %d draws redrawn for a rounding or top-k near-tie\n", cases, redraws);
  EXPECT_LT(redraws, cases);  // the margin excludes a minority of draws
}

// Decode steps whose keys span several flash-decoding runs (at the last token:
// 140 window rows, + CSA's 140 selected entries, + HCA's 70 entries: 3 to 5
// runs of kSplitKeys), token by token through a state, against the naive
// reference (shorter runs hold fewer rounding near-ties to redraw).
TEST(Deployment, DecodeOverManyKeyRunsEqualsReference) {
  std::mt19937 rng(20261202);
  const Config c = test::small_config({.window = 200, .rate_csa = 1, .rate_hca = 2, .topk = 150});
  const int64_t seq = 140, d = c.hidden_size;
  int redraws = 0;
  // draw() screens the one-shot forward for near-ties; a decode step rounds its
  // own FP8 cache and scores, where an ISA's last-bit difference (the portable
  // build's) can still flip one rounding: such a draw is redrawn too, a bounded
  // number of times (a real error fails every draw).
  constexpr int kAttempts = 6;
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    int64_t worst_token = -1;
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
      Drawn k{c, t, {}, {}, {}, {}};
      ASSERT_TRUE(draw(rng, k, 1, seq, 0, redraws)) << "no unambiguous draw";
      const Layer layer(c, t, k.w, LayerOptions{WeightFormat::f32, kDeploy});
      LayerState st = layer.new_state();
      worst_token = -1;
      for (int64_t i = 0; i < seq && worst_token < 0; ++i) {
        const Tensor yi = layer.forward(
            Tensor({1, d}, std::vector<float>(k.x.data.begin() + i * d, k.x.data.begin() + (i + 1) * d)), st);
        if (!test::all_close(
                yi.ptr(), Tensor({d}, std::vector<float>(k.ref.data.begin() + i * d, k.ref.data.begin() + (i + 1) * d)),
                1e-5, 1e-5))
          worst_token = i;
      }
      if (worst_token < 0) break;
      ++redraws;
    }
    EXPECT_EQ(worst_token, -1) << layer_type_name(t) << ": decoded token " << worst_token
                               << " differs from the reference in " << kAttempts << " draws out of " << kAttempts;
  }
  std::printf("%d draws redrawn for a rounding or top-k near-tie\n", redraws);
}

// Prefill pieces (> kPrefillChunk tokens) and decode steps with several key
// tiles (> 512 entries): the same as one unsplit forward (debug output
// disables the split). Against the reference this long a run always holds some
// rounding near-tie; the random shapes above compare short ones with it.
TEST(Deployment, LongSequencesEqualOneUnsplitForward) {
  std::mt19937 rng(12);
  const Config c = test::small_config({.window = 4, .rate_csa = 2, .rate_hca = 2, .topk = 6});
  const int64_t s = Layer::kPrefillChunk + 41, decoded = 4, d = c.hidden_size;
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    const Layer layer(c, t, test::random_weights(c, t, rng), LayerOptions{WeightFormat::f32, kDeploy});
    const Tensor x = test::random_tensor({1, s, d}, rng, 2.0f);
    std::vector<Intermediates> dbg;
    const Tensor whole = layer.forward(x, &dbg);
    EXPECT_TRUE(test::all_close(layer.forward(x), whole, 1e-5, 1e-5)) << layer_type_name(t) << " split";
    LayerState st = layer.new_state();
    const int64_t pre = s - decoded;
    Tensor y = layer.forward(Tensor({pre, d}, std::vector<float>(x.data.begin(), x.data.begin() + pre * d)), st);
    for (int64_t i = pre; i < s; ++i) {
      const Tensor yi =
          layer.forward(Tensor({1, d}, std::vector<float>(x.data.begin() + i * d, x.data.begin() + (i + 1) * d)), st);
      y.data.insert(y.data.end(), yi.data.begin(), yi.data.end());
    }
    EXPECT_TRUE(test::all_close(y.ptr(), Tensor({s * d}, whole.data), 1e-5, 1e-5)) << layer_type_name(t) << " decode";
    if (t == LayerType::csa) {
      EXPECT_GT(st.indexer().emitted, 512);
    }
  }
}

// The option changes what it should: outputs move by about the FP8 step, the
// state shrinks; the reference numerics are the default.
// A decode step over more than 63 flash-decoding runs (a sliding window of
// 4,200: the last token attends 4,161 keys, 66 runs in 33 groups of 2, each
// group's runs merged online) equals the one-shot forward (the attention's
// GEMM path, the same FP8 cache) to 1e-5, with the same bits at 1, 2 and 3 threads.
TEST(Deployment, DecodeOverGroupedRunsEqualsOneShot) {
  std::mt19937 rng(20261203);
  const Config c = test::small_config({.window = 4200});
  const int64_t seq = 4161, d = c.hidden_size;
  const Layer layer(c, LayerType::sliding, test::random_weights(c, LayerType::sliding, rng),
                    LayerOptions{WeightFormat::f32, kDeploy});
  const Tensor x = test::random_tensor({seq, d}, rng, 2.0f), want = layer.forward(x);
  LayerState prefilled = layer.new_state();
  layer.forward(test::rows(x, 0, seq - 1), prefilled);
  const int before = omp_get_max_threads();
  Tensor first;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    LayerState st = prefilled;
    const Tensor got = layer.forward(test::rows(x, seq - 1, 1), st);
    EXPECT_TRUE(test::all_close(got, test::rows(want, seq - 1, 1), 1e-5, 1e-5)) << threads << " threads";
    if (first.numel() == 0) first = got;
    EXPECT_TRUE(test::same_bits(got, first)) << threads << " threads";
  }
  omp_set_num_threads(before);
}

TEST(Deployment, ChangesOutputsAndShrinksTheState) {
  std::mt19937 rng(13);
  Config c = test::small_config({.head_dim = 136});  // 128 FP8 dims: 2 blocks
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    const LayerWeights w = test::random_weights(c, t, rng);
    const Layer ref(c, t, w), dep(c, t, w, LayerOptions{WeightFormat::f32, kDeploy});
    EXPECT_EQ(ref.numerics(), Numerics::reference);
    EXPECT_EQ(dep.numerics(), kDeploy);
    const Tensor x = test::random_tensor({1, 40, c.hidden_size}, rng, 2.0f);
    const Tensor a = ref.forward(x), b = dep.forward(x);
    double diff = 0, scale = 0;
    for (size_t i = 0; i < a.data.size(); ++i)
      diff = std::max(diff, double(std::fabs(a.data[i] - b.data[i]))),
      scale = std::max(scale, double(std::fabs(a.data[i])));
    EXPECT_GT(diff, 1e-4 * scale) << layer_type_name(t);  // (CSA: a changed top-k choice can move more)
    LayerState sr = ref.new_state(), sd = dep.new_state();
    ref.forward(x.data.size() ? Tensor({40, c.hidden_size}, x.data) : x, sr);
    dep.forward(Tensor({40, c.hidden_size}, x.data), sd);
    EXPECT_EQ(sd.numerics(), kDeploy);
    EXPECT_LT(sd.clone().bytes(), sr.clone().bytes()) << layer_type_name(t);
  }
}

TEST(Deployment, InputErrors) {
  std::mt19937 rng(14);
  Config c = test::small_config({.index_dim = 24});  // not a power of two
  try {
    const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng),
                      LayerOptions{WeightFormat::f32, kDeploy});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("index_head_dim must be a power of two"), std::string::npos) << e.what();
  }
  const Config wide = test::small_config({.index_dim = 4096});  // a power of two past the FP4 indexer's 64 blocks
  try {
    const Layer layer(wide, LayerType::csa, test::random_weights(wide, LayerType::csa, rng),
                      LayerOptions{WeightFormat::f32, kDeploy});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("index_head_dim must be at most 2048"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(Layer(wide, LayerType::csa, test::random_weights(wide, LayerType::csa, rng)));  // reference: any
  // The other layer types have no indexer: any D_I.
  EXPECT_NO_THROW(
      Layer(c, LayerType::hca, test::random_weights(c, LayerType::hca, rng), LayerOptions{WeightFormat::f32, kDeploy}));
  c = test::small_config();
  const LayerWeights w = test::random_weights(c, LayerType::csa, rng);
  const Layer dep(c, LayerType::csa, w, LayerOptions{WeightFormat::f32, kDeploy}), ref(c, LayerType::csa, w);
  LayerState s_ref = ref.new_state(), s_dep = dep.new_state();
  const Tensor x = test::random_tensor({3, c.hidden_size}, rng);
  try {
    dep.forward(x, s_ref);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("state has reference numerics, the layer deployment"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ref.forward(x, s_dep), Error);
  EXPECT_EQ(s_ref.position(), 0);
  EXPECT_THROW(parse_numerics("fp8"), Error);
  EXPECT_EQ(parse_numerics("deployment"), kDeploy);
  EXPECT_EQ(numerics_name(kDeploy), "deployment");
}

}  // namespace
}  // namespace dsv4
