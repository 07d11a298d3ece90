// Bit-identical results for 1, 2 and 3 threads where the work is split: GEMMs
// of several 256 x 512 tiles (rows, output features and keys), a prefill of
// several kPrefillChunk pieces, decode over more than 512 entries (the
// indexer spreads key tiles over the threads) and a ragged batch mixing all of
// them. Small hidden sizes keep this cheap; lengths do the work.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>

#include "dsv4/layer.h"
#include "test_util.h"

namespace dsv4 {
namespace {

const LayerType kTypes[] = {LayerType::sliding, LayerType::csa, LayerType::hca};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

bool same_bits(const RowStore& a, const RowStore& b) {
  return a.rows() == b.rows() && a.row_bytes() == b.row_bytes() &&
         (a.rows() == 0 || std::memcmp(a.data(), b.data(), a.rows() * a.row_bytes()) == 0);
}

::testing::AssertionResult same_state(const LayerState& a, const LayerState& b) {
  if (a.position() != b.position()) return ::testing::AssertionFailure() << "positions differ";
  if (!same_bits(a.window(), b.window())) return ::testing::AssertionFailure() << "window differs";
  for (auto [x, y, what] :
       {std::tuple{&a.compressor(), &b.compressor(), "compressor"}, std::tuple{&a.indexer(), &b.indexer(), "indexer"}})
    if (!same_bits(x->entries, y->entries) || !same_bits(x->pend_c, y->pend_c) || !same_bits(x->pend_z, y->pend_z) ||
        !same_bits(x->prev_c, y->prev_c) || !same_bits(x->prev_zb, y->prev_zb))
      return ::testing::AssertionFailure() << what << " differs";
  return ::testing::AssertionSuccess();
}

// Runs f at 1, 2 and 3 threads; f returns the outputs to compare bit for bit.
template <class F>
void at_each_thread_count(const std::string& what, F f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<Tensor> first = f();
  for (int threads : {2, 3}) {
    omp_set_num_threads(threads);
    const std::vector<Tensor> got = f();
    ASSERT_EQ(got.size(), first.size());
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_TRUE(got[i].shape == first[i].shape && same_bits(got[i].data, first[i].data))
          << what << ": output " << i << " differs at " << threads << " threads";
  }
  omp_set_num_threads(saved);
}

// Every fused projection, o_a and o_b has more than 512 output features, and a
// prefill of 1024 + 100 tokens has more than 256 rows per piece.
TEST(BitIdentity, LongPrefillWideProjections) {
  std::mt19937 rng(31);
  // o_b: 2 column tiles; x-side: q_lora + D (+ compressors) > 512; c_q-side:
  // H·D = 544; o_a: g·d_g = 528.
  const Config c = test::small_config({.hidden_size = 520, .head_dim = 136, .q_rank = 400, .o_rank = 264});
  const Tensor x = test::random_tensor({1, Layer::kPrefillChunk + 100, c.hidden_size}, rng, 2.0f);
  for (LayerType t : kTypes) {
    const Layer layer(c, t, test::random_weights(c, t, rng));
    at_each_thread_count(std::string(layer_type_name(t)) + " prefill",
                         [&] { return std::vector<Tensor>{layer.forward(x)}; });
  }
}

// Decode steps over more than 512 window keys (sliding), selected entries
// (CSA: k = 520 of up to 1100) and compressed entries (HCA), then one
// forward_batch of ragged chunks: a long prefill split into pieces, a 300-token
// chunk, single tokens at > 512 entries, an empty chunk. Batched equals
// separate calls and neither depends on the thread count. In deployment
// numerics a decode step splits one query's keys over the threads (runs of
// kSplitKeys, flash-decoding): the same, over 9 to 17 runs.
TEST(BitIdentity, DecodeOverManyEntriesAndRaggedBatch) {
  std::mt19937 rng(32);
  const Config c = test::small_config(
      {.hidden_size = 32, .heads = 2, .o_groups = 1, .window = 520, .rate_csa = 1, .rate_hca = 2, .topk = 520});
  for (auto [t, numerics] : {std::pair{LayerType::sliding, Numerics::reference},
                             {LayerType::csa, Numerics::reference},
                             {LayerType::hca, Numerics::reference},
                             {LayerType::sliding, Numerics::deployment},
                             {LayerType::csa, Numerics::deployment},
                             {LayerType::hca, Numerics::deployment}}) {
    const std::string name = std::string(layer_type_name(t)) + (numerics == Numerics::deployment ? " deployment" : "");
    const Layer layer(c, t, test::random_weights(c, t, rng), LayerOptions{WeightFormat::f32, numerics});
    LayerState long_st = layer.new_state(), mid_st = layer.new_state();  // 1100 and 600 tokens in
    layer.forward(test::random_tensor({1100, c.hidden_size}, rng, 2.0f), long_st);
    layer.forward(test::random_tensor({600, c.hidden_size}, rng, 2.0f), mid_st);

    const Tensor steps = test::random_tensor({3, c.hidden_size}, rng, 2.0f);
    LayerState first;
    at_each_thread_count(name + " decode", [&] {
      LayerState st = long_st;
      std::vector<Tensor> ys;
      for (int64_t i = 0; i < steps.dim(0); ++i)
        ys.push_back(layer.forward(Tensor({1, c.hidden_size}, {steps.data.begin() + i * c.hidden_size,
                                                               steps.data.begin() + (i + 1) * c.hidden_size}),
                                   st));
      if (first.position() == 0) first = st;
      EXPECT_TRUE(same_state(st, first)) << name << " decode";
      return ys;
    });

    const std::vector<Tensor> xs = {
        test::random_tensor({Layer::kPrefillChunk + 76, c.hidden_size}, rng, 2.0f),
        test::random_tensor({300, c.hidden_size}, rng, 2.0f), test::random_tensor({1, c.hidden_size}, rng, 2.0f),
        test::random_tensor({0, c.hidden_size}, rng), test::random_tensor({1, c.hidden_size}, rng, 2.0f)};
    const std::vector<const LayerState*> start = {nullptr, &mid_st, &long_st, &mid_st, &mid_st};
    auto fresh = [&] {
      std::vector<LayerState> sts;
      for (const LayerState* s : start) sts.push_back(s ? *s : layer.new_state());
      return sts;
    };
    std::vector<LayerState> sep = fresh();
    std::vector<Tensor> want;
    for (size_t i = 0; i < xs.size(); ++i) want.push_back(layer.forward(xs[i], sep[i]));
    at_each_thread_count(name + " batch", [&] {
      std::vector<LayerState> sts = fresh();
      std::vector<const Tensor*> xp;
      std::vector<LayerState*> sp;
      for (size_t i = 0; i < xs.size(); ++i) xp.push_back(&xs[i]), sp.push_back(&sts[i]);
      const std::vector<Tensor> ys = layer.forward_batch(xp, sp);
      for (size_t i = 0; i < xs.size(); ++i) {
        EXPECT_TRUE(same_bits(ys.at(i).data, want[i].data)) << name << " batch chunk " << i << " vs separate call";
        EXPECT_TRUE(same_state(sts[i], sep[i])) << name << " batch chunk " << i;
      }
      return ys;
    });
  }
}

// Decode steps and serving batches (short chunks only) in deployment numerics
// run the stages that read little beside the c_q-side projection's weight
// stream (schedule.cpp prepare_beside: its tiles claimed by whichever thread
// is free); forward_projected runs the same computations in stage order. Same
// bits, at 1, 2 and 3 threads, every type (and the reference numerics, in
// stage order both ways). Wide: q's rows span 9 tiles (the last partial), the
// indexer queries' 2, the scores run beside; long: more keys than
// index_fits_beside lets beside a stream this short, so they run after it.
TEST(BitIdentity, DecodeBesideTheWeightStreamEqualsStageOrder) {
  std::mt19937 rng(33);
  const Config wide = test::small_config(
      {.hidden_size = 48, .heads = 4, .head_dim = 136, .window = 24, .index_heads = 4, .index_dim = 32, .topk = 6});
  const Config long_keys = test::small_config({.hidden_size = 32,
                                               .heads = 1,
                                               .head_dim = 16,
                                               .q_rank = 8,
                                               .window = 24,
                                               .rate_csa = 1,
                                               .index_heads = 8,
                                               .index_dim = 32,
                                               .topk = 6});
  for (const Config& c : {wide, long_keys})
    for (Numerics numerics : {Numerics::reference, Numerics::deployment})
      for (LayerType t : kTypes) {
        if (&c == &long_keys && t != LayerType::csa) continue;
        const std::string name =
            std::string(layer_type_name(t)) + (numerics == Numerics::deployment ? " deployment" : " reference");
        const Layer layer(c, t, test::random_weights(c, t, rng), LayerOptions{WeightFormat::f32, numerics});
        std::vector<LayerState> start(3, layer.new_state());
        const int64_t n0 = &c == &long_keys ? 600 : 70;  // 600: 600 keys x 256 > 8 x 8.7 KB of c_q-side weights
        for (size_t s = 0; s < start.size(); ++s)        // n0, n0 + 31, n0 + 62 tokens in
          layer.forward(test::random_tensor({n0 + 31 * int64_t(s), c.hidden_size}, rng, 2.0f), start[s]);
        const Tensor steps = test::random_tensor({6, c.hidden_size}, rng, 2.0f);
        at_each_thread_count(name + " decode beside the stream", [&] {
          std::vector<LayerState> beside = start, ordered = start;
          std::vector<Tensor> ys;
          for (int64_t i = 0; i < 2; ++i) {  // two steps of a batch of three sequences
            std::vector<Tensor> toks;
            std::vector<const Tensor*> xp;
            std::vector<LayerState*> sp;
            for (size_t s = 0; s < start.size(); ++s) toks.push_back(test::rows(steps, i * 3 + int64_t(s), 1));
            for (size_t s = 0; s < start.size(); ++s) xp.push_back(&toks[s]), sp.push_back(&beside[s]);
            const std::vector<Tensor> got = i == 0 ? layer.forward_batch(xp, sp) : std::vector<Tensor>{};
            for (size_t s = 0; s < start.size(); ++s) {
              const Tensor y = i == 0 ? got[s] : layer.forward(toks[s], beside[s]);
              const Tensor want =
                  layer.forward_projected(layer.project_rows(toks[s], ordered[s].position()), ordered[s]);
              EXPECT_TRUE(test::same_bits(y, want)) << name << " step " << i << " sequence " << s;
              EXPECT_TRUE(same_state(beside[s], ordered[s])) << name << " step " << i << " sequence " << s;
              ys.push_back(y);
            }
          }
          return ys;
        });
      }
}

}  // namespace
}  // namespace dsv4
