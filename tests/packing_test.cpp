// Packed documents (Layer::forward(x, cu_seqlens) and friends): each document
// of the packed buffer equals the document run alone, bit for bit — forward
// (both numerics, with and without debug output), forward_train + backward,
// attention maps — at 1, 2 and 3 threads; and every bad boundary is refused.
// The lengths cover documents shorter than the window, than one compressor
// window, empty ones, ones with more entries than top-k, ones split into
// kPrefillChunk pieces, and enough tokens to fill several row-budget steps.
#include <gtest/gtest.h>
#include <omp.h>

#include <functional>
#include <numeric>

#include "dsv4/error.h"
#include "dsv4/layer.h"
#include "test_util.h"

namespace dsv4 {
namespace {

const LayerType kTypes[] = {LayerType::sliding, LayerType::csa, LayerType::hca};

// Window 8, CSA m = 4 (top-3), HCA m' = 8.
Config packing_config() { return test::small_config(); }

std::vector<int64_t> boundaries(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> cu{0};
  for (int64_t n : lengths) cu.push_back(cu.back() + n);
  return cu;
}

// 5 < W, 3 < m, an empty one, 40 tokens (10 CSA entries > k = 3), a single
// token, 13 and 17 (either side of the row-invariant short chunk), a
// 1100-token document (two pieces), a 300-token one.
const std::vector<int64_t> kMix = {5, 3, 0, 40, 1, 13, 1100, 17, 300};

// Many documents: more rows than one step of a split call holds (kMaxStepRows).
std::vector<int64_t> many_lengths(std::mt19937& rng) {
  std::vector<int64_t> n = {1100};
  std::uniform_int_distribution<int64_t> len(0, 400);
  while (std::accumulate(n.begin(), n.end(), int64_t{0}) < 4500) n.push_back(len(rng));
  return n;
}

// Runs f at 1, 2 and 3 threads (or the counts given).
template <class F>
void at_each_thread_count(F f, std::vector<int> counts = {1, 2, 3}) {
  const int saved = omp_get_max_threads();
  for (int threads : counts) {
    omp_set_num_threads(threads);
    f(threads);
  }
  omp_set_num_threads(saved);
}

// Each document run alone, its outputs stacked [T, d].
Tensor documents_alone(const Layer& layer, const Tensor& x, const std::vector<int64_t>& cu) {
  Tensor out(x.shape);
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    const Tensor y = layer.forward(test::rows(x, cu[i], cu[i + 1] - cu[i]));
    std::copy(y.data.begin(), y.data.end(), out.data.begin() + cu[i] * x.dim(1));
  }
  return out;
}

TEST(Packing, ForwardEqualsEachDocumentAloneBitForBit) {
  std::mt19937 rng(2201);
  const Config c = packing_config();
  const std::vector<int64_t> cu = boundaries(kMix), cu_many = boundaries(many_lengths(rng));
  const Tensor x = test::random_tensor({cu.back(), c.hidden_size}, rng, 2.0f);
  const Tensor x_many = test::random_tensor({cu_many.back(), c.hidden_size}, rng, 2.0f);
  for (Numerics num : {Numerics::reference, Numerics::deployment})
    for (LayerType t : kTypes) {
      const Layer layer(c, t, test::random_weights(c, t, rng), {.numerics = num});
      const std::string name = std::string(layer_type_name(t)) + " " + std::string(numerics_name(num));
      const Tensor want = documents_alone(layer, x, cu), want_many = documents_alone(layer, x_many, cu_many);
      at_each_thread_count([&](int threads) {
        const std::string what = name + " at " + std::to_string(threads) + " threads";
        EXPECT_TRUE(test::same_bits(layer.forward(x, cu), want)) << what;
        EXPECT_TRUE(test::same_bits(layer.forward(x_many, cu_many), want_many)) << what << ", many documents";
      });
      // With debug output (no split into pieces): the same output, and each
      // document's intermediates are its own.
      std::vector<Intermediates> dbg;
      EXPECT_TRUE(test::same_bits(layer.forward(x, cu, &dbg), want)) << name << " with debug";
      ASSERT_EQ(dbg.size(), kMix.size());
      for (size_t i = 0; i < kMix.size(); ++i) {
        std::vector<Intermediates> alone;
        layer.forward(test::rows(x, cu[i], kMix[i]), &alone);
        EXPECT_TRUE(test::same_bits(dbg[i].kv, alone[0].kv)) << name << ": kv of document " << i;
        EXPECT_TRUE(test::same_bits(dbg[i].compressed_kv, alone[0].compressed_kv)) << name << ": entries, doc " << i;
        EXPECT_TRUE(dbg[i].topk.shape == alone[0].topk.shape && dbg[i].topk.data == alone[0].topk.data)
            << name << ": top-k of document " << i;
      }
    }
}

// Projections wider than one 512-column tile and rows over several 256-row
// tiles, weights held as bf16 (widened tile by tile): the documents' GEMM tiles
// share one parallel region and keep their own bits.
TEST(Packing, WideProjectionsWithBf16WeightsEqualEachDocumentAlone) {
  std::mt19937 rng(2206);
  const Config c = test::small_config({.hidden_size = 520, .head_dim = 136, .q_rank = 400, .o_rank = 264});
  const std::vector<int64_t> cu = boundaries({300, 17, 600, 5});
  const Tensor x = test::random_tensor({cu.back(), c.hidden_size}, rng, 2.0f);
  for (LayerType t : kTypes) {
    const Layer layer(c, t, test::random_weights(c, t, rng), {.weights = WeightFormat::bf16});
    const Tensor want = documents_alone(layer, x, cu);
    at_each_thread_count(
        [&](int threads) {
          EXPECT_TRUE(test::same_bits(layer.forward(x, cu), want))
              << layer_type_name(t) << " at " << threads << " threads";
        },
        {1, 3});
  }
}

TEST(Packing, BatchIsPackedWithEqualLengths) {
  std::mt19937 rng(2202);
  const Config c = packing_config();
  const Tensor x = test::random_tensor({3, 50, c.hidden_size}, rng, 2.0f);
  for (LayerType t : kTypes) {
    const Layer layer(c, t, test::random_weights(c, t, rng));
    const Tensor packed = layer.forward(Tensor({150, c.hidden_size}, x.data), std::vector<int64_t>{0, 50, 100, 150});
    EXPECT_EQ(packed.data, layer.forward(x).data) << layer_type_name(t);
  }
}

// dx row for row as each document's own backward; the weights' gradients as
// the documents' backwards accumulated in order (Layer::backward(tape, dy, grads)).
TEST(Packing, BackwardEqualsTheDocumentsBackwardsInOrder) {
  std::mt19937 rng(2203);
  for (const std::vector<int64_t>& lengths : {kMix, many_lengths(rng)}) {
    // Many documents: narrower (the same window, rates and top-k) and one thread
    // count, to stay cheap; what they add is the tape filled over several steps.
    const bool many = lengths.size() > kMix.size();
    const Config c = many ? test::small_config({.hidden_size = 16, .heads = 2, .head_dim = 8, .q_rank = 8, .o_rank = 4})
                          : packing_config();
    const std::vector<int64_t> cu = boundaries(lengths);
    const Tensor x = test::random_tensor({cu.back(), c.hidden_size}, rng, 2.0f);
    const Tensor dy = test::random_tensor({cu.back(), c.hidden_size}, rng);
    for (LayerType t : kTypes) {
      const Layer layer(c, t, test::random_weights(c, t, rng));
      const std::string name(layer_type_name(t));
      LayerGradients want = layer.zero_gradients();
      Tensor want_dx({cu.back(), c.hidden_size});
      Tape tape;
      for (size_t i = 0; i < lengths.size(); ++i) {
        layer.forward_train(test::rows(x, cu[i], lengths[i]), tape);
        layer.backward(tape, test::rows(dy, cu[i], lengths[i]), want);
        std::copy(want.dx.data.begin(), want.dx.data.end(), want_dx.data.begin() + cu[i] * c.hidden_size);
      }
      at_each_thread_count(
          [&](int threads) {
            const std::string what = name + " at " + std::to_string(threads) + " threads";
            Tape packed_tape;
            EXPECT_TRUE(test::same_bits(layer.forward_train(x, cu, packed_tape), layer.forward(x, cu))) << what;
            const LayerGradients g = layer.backward(packed_tape, dy);
            EXPECT_TRUE(test::same_bits(g.dx, want_dx)) << what << ": dx";
            for (const WeightSpec& s : weight_specs(c, t))
              EXPECT_TRUE(
                  test::same_bits(test::weight_named(g.weights, s.name), test::weight_named(want.weights, s.name)))
                  << what << ": " << s.name;
          },
          many ? std::vector<int>{2} : std::vector<int>{1, 2, 3});
      if (!many) {
        EXPECT_TRUE(test::same_bits(layer.backward(x, cu, dy).dx, want_dx)) << name << ": backward(x, cu, dy)";
      }
    }
  }
}

TEST(Packing, AttentionMapsPerDocument) {
  std::mt19937 rng(2204);
  const Config c = packing_config();
  const std::vector<int64_t> cu = boundaries(kMix);
  const Tensor x = test::random_tensor({cu.back(), c.hidden_size}, rng, 2.0f);
  for (LayerType t : kTypes) {
    const Layer layer(c, t, test::random_weights(c, t, rng));
    const std::vector<AttentionMap> maps = layer.attention_map(x, cu, true);
    ASSERT_EQ(maps.size(), kMix.size());
    for (size_t i = 0; i < kMix.size(); ++i) {
      if (kMix[i] == 0) {
        EXPECT_TRUE(maps[i].mass.empty()) << "an empty document has an empty map";
        continue;
      }
      const AttentionMap alone = layer.attention_map(test::rows(x, cu[i], kMix[i]), true).at(0);
      EXPECT_TRUE(test::same_bits(maps[i].mass, alone.mass)) << layer_type_name(t) << ": document " << i;
      EXPECT_TRUE(test::same_bits(maps[i].dense, alone.dense)) << layer_type_name(t) << ": document " << i;
    }
  }
}

void expect_error(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(Packing, RefusesBadBoundariesAndShapes) {
  std::mt19937 rng(2205);
  const Config c = packing_config();
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  const Tensor x = test::random_tensor({10, c.hidden_size}, rng);
  using V = std::vector<int64_t>;
  expect_error([&] { layer.forward(x, V{}); }, "cu_seqlens: empty");
  expect_error([&] { layer.forward(x, V{1, 10}); }, "first boundary must be 0");
  expect_error([&] { layer.forward(x, V{0, 6, 4, 10}); }, "cu_seqlens[2] = 4 < cu_seqlens[1] = 6");
  expect_error([&] { layer.forward(x, V{0, 4, 9}); }, "length T = 10");
  expect_error([&] { layer.forward(x, V{0, 4, 11}); }, "length T = 10");
  expect_error([&] { layer.forward(test::random_tensor({2, 5, c.hidden_size}, rng), V{0, 10}); }, "[T, 64]");
  expect_error([&] { layer.forward(test::random_tensor({10, 8}, rng), V{0, 10}); }, "[T, 64]");
  Tape tape;
  expect_error([&] { layer.forward_train(x, V{0, 3, 2, 10}, tape); }, "must not decrease");
  expect_error([&] { layer.backward(x, V{0, 12}, x); }, "length T = 10");
  expect_error([&] { layer.attention_map(x, V{0, 5}); }, "length T = 10");
  const Layer deployed(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng),
                       {.numerics = Numerics::deployment});
  expect_error([&] { deployed.forward_train(x, V{0, 10}, tape); }, "deployment");
  // Allowed: empty documents anywhere (padded boundaries), and no document at all.
  EXPECT_TRUE(test::same_bits(layer.forward(x, V{0, 0, 10, 10, 10}), layer.forward(x)));
  EXPECT_EQ(layer.forward(Tensor({0, c.hidden_size}), V{0}).numel(), 0);
}

TEST(Packing, SegmentIdsGiveBoundaries) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(cu_seqlens_from_segment_ids(V{7, 7, 8, 8, 8, 12}), (V{0, 2, 5, 6}));
  EXPECT_EQ(cu_seqlens_from_segment_ids(V{0, 0, 0}), (V{0, 3}));
  EXPECT_EQ(cu_seqlens_from_segment_ids(V{}), (V{0}));
  expect_error([] { cu_seqlens_from_segment_ids(V{1, 1, 2, 1}); }, "segment_ids[3] = 1 < segment_ids[2] = 2");
}

}  // namespace
}  // namespace dsv4
