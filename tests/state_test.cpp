// Decode state: chunked == one-shot over random configs and chunkings, and
// forward_batch == separate calls (to 1e-6; bit for bit across thread counts).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <tuple>

#include "dsv4/layer.h"
#include "dsv4/state.h"
#include "reference.h"
#include "state_util.h"
#include "test_util.h"

namespace dsv4 {
namespace {

using namespace state_test;

// ---- chunked prefill and decode == one-shot ---------------------------------

// Deployment numerics: true if the reference's roundings of x came near a tie
// (two fp32 evaluation orders may round differently there; see reference/numerics.h).
// The margin covers how far the fast path's chunked and one-shot values (BLAS tiles
// vs the row-invariant kernel) and the reference's can drift apart: ~1e-6 relative.
bool rounding_near_tie(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x) {
  double tie = 0;
  reference::forward(c, t, w, Tensor({1, x.dim(0), x.dim(1)}, x.data), nullptr, Numerics::deployment, &tie);
  return tie <= 2e-6;
}

void chunkings_equal_one_shot(Numerics n, int n_cases) {
  std::mt19937 rng(424242);
  int cases = 0, redraws = 0, patterns = 0;
  for (int i = 0; cases < n_cases; ++i) {
    const LayerType type = kTypes[i % 3];
    const Config c = random_config(rng, n);
    const int64_t r = c.compress_rate(type), w = c.sliding_window;
    const int64_t s = std::max(2 * r, w) + 1 + static_cast<int64_t>(rng() % 30);
    const LayerWeights weights = test::random_weights(c, type, rng);
    const Layer layer(c, type, weights, with(n));
    const Tensor x = test::random_tensor({s, c.hidden_size}, rng, 2.0f);
    Intermediates ref_dbg;
    const Tensor ref = one_shot(layer, x, ref_dbg);
    if (test::ambiguous_topk(c, type, ref_dbg) ||
        (n == Numerics::deployment && rounding_near_tie(c, type, weights, x))) {
      ASSERT_LT(++redraws, 100);
      continue;
    }
    ++cases;
    std::vector<std::vector<int64_t>> all = {
        chunks_at({r - 1, r, w - 1, w, 2 * r}, s),  // boundaries on the window and compressor edges
        chunks_at({r - 1, w}, s),
        chunks_at({r, w - 1, 2 * r}, s),
        chunks_of(1, s),  // token-by-token decode
        random_chunks(rng, s, 2 * w + 2 * r),
        random_chunks(rng, s, 5)};
    for (int64_t len : {r - 1, r, w - 1, w, 2 * r})
      if (len > 0) all.push_back(chunks_of(len, s));
    for (const auto& chunks : all) {
      ++patterns;
      SCOPED_TRACE(std::string(layer_type_name(type)) + " case " + std::to_string(cases) + " S=" + std::to_string(s) +
                   " r=" + std::to_string(r) + " W=" + std::to_string(w) + " chunks " + show(chunks));
      LayerState st = layer.new_state();
      const Fed f = feed(layer, x, chunks, st, type == LayerType::csa);
      EXPECT_EQ(st.position(), s);
      ASSERT_TRUE(test::all_close(f.y, ref, 1e-6, 1e-6));
      EXPECT_EQ(st.numerics(), n);
      if (type != LayerType::csa) continue;
      for (int64_t t = 0; t < s; ++t) ASSERT_EQ(f.topk.at(t), topk_set(ref_dbg.topk, t)) << "query " << t;
    }
  }
  EXPECT_GT(patterns, 8 * n_cases);  // about 11 chunkings per case
}

TEST(StateChunking, AnyChunkingEqualsOneShot) { chunkings_equal_one_shot(Numerics::reference, 120); }
TEST(StateChunking, AnyChunkingEqualsOneShotDeployment) { chunkings_equal_one_shot(Numerics::deployment, 60); }

// ---- forward_batch == separate forward calls ----------------------------------

// Stored rows, read as fp32.
::testing::AssertionResult close(const RowStore& a, const RowStore& b) {
  auto t = [](const RowStore& s) {
    std::vector<float> buf;
    const float* v = s.rows_f32(s.rows(), buf);
    return Tensor({s.rows() * s.width()}, std::vector<float>(v, v + s.rows() * s.width()));
  };
  return test::all_close(t(a), t(b), 1e-6, 1e-6);
}

// Several sequences at different positions, stepped with ragged chunks (prefill-
// sized, single tokens, empty) through forward_batch at 1, 2 and 3 threads and
// through separate forward calls. Batched results never depend on the thread
// count; against separate calls they are bit-identical if `bit_exact`, else
// equal within 1e-6 (steps with a top-k near-tie excepted, see test::ambiguous_topk).
void batch_vs_separate(bool bit_exact, Numerics n = Numerics::reference) {
  std::mt19937 rng(99);
  const int saved_threads = omp_get_max_threads();
  int compared = 0;
  for (int rep = 0; rep < 4; ++rep)
    for (LayerType type : kTypes) {
      const Config c = rep == 0 ? test::small_config() : random_config(rng, n);
      const Layer layer(c, type, test::random_weights(c, type, rng), with(n));
      const int n_seq = 2 + static_cast<int>(rng() % 4);
      std::vector<LayerState> sep(n_seq, layer.new_state());
      for (LayerState& st : sep)
        layer.forward(test::random_tensor({static_cast<int64_t>(rng() % 40), c.hidden_size}, rng, 2.0f), st);
      std::vector<LayerState> bat = sep;
      for (int step = 0; step < 6; ++step) {
        std::vector<Tensor> xs;
        for (int i = 0; i < n_seq; ++i) {
          const int64_t len = rng() % 3 == 0 ? 1 : static_cast<int64_t>(rng() % 20);
          xs.push_back(test::random_tensor({len, c.hidden_size}, rng, 2.0f));
        }
        std::vector<const Tensor*> xp;
        for (const Tensor& x : xs) xp.push_back(&x);
        std::vector<Tensor> want;
        std::vector<bool> tie;
        for (int i = 0; i < n_seq; ++i) {
          Intermediates dbg;
          const int64_t p0 = sep[i].position();
          want.push_back(layer.forward(xs[i], sep[i], &dbg));
          tie.push_back(test::ambiguous_topk(c, type, dbg, p0));
        }
        std::vector<Tensor> first;
        std::vector<LayerState> next;
        for (int threads : {1, 2, 3}) {
          omp_set_num_threads(threads);
          std::vector<LayerState> sts = bat;
          std::vector<LayerState*> sp;
          for (LayerState& st : sts) sp.push_back(&st);
          const std::vector<Tensor> got = layer.forward_batch(xp, sp);
          ASSERT_EQ(got.size(), xs.size());
          for (int i = 0; i < n_seq; ++i) {
            SCOPED_TRACE(std::string(layer_type_name(type)) + " rep " + std::to_string(rep) + " step " +
                         std::to_string(step) + " seq " + std::to_string(i) + " at " +
                         std::to_string(bat[i].position()) + " len " + std::to_string(xs[i].dim(0)) + " threads " +
                         std::to_string(threads));
            if (threads > 1) {
              ASSERT_TRUE(same_bits(got[i], first[i]));
              ASSERT_EQ(sts[i].compressor().entries, next[i].compressor().entries);
              ASSERT_EQ(sts[i].indexer().entries, next[i].indexer().entries);
              ASSERT_EQ(sts[i].window(), next[i].window());
              continue;
            }
            ASSERT_EQ(sts[i].position(), sep[i].position());
            if (bit_exact) {
              EXPECT_TRUE(same_bits(got[i], want[i]));
              EXPECT_EQ(sts[i].compressor().entries, sep[i].compressor().entries);
              EXPECT_EQ(sts[i].indexer().entries, sep[i].indexer().entries);
              EXPECT_EQ(sts[i].window(), sep[i].window());
            } else {
              if (!tie[i]) {
                EXPECT_TRUE(test::all_close(got[i], want[i], 1e-6, 1e-6));
              }
              EXPECT_TRUE(close(sts[i].compressor().entries, sep[i].compressor().entries));
              EXPECT_TRUE(close(sts[i].indexer().entries, sep[i].indexer().entries));
              EXPECT_TRUE(close(sts[i].window(), sep[i].window()));
            }
            compared += !tie[i];
          }
          if (threads == 1) first = got, next = sts;
        }
        bat = std::move(next);
      }
    }
  omp_set_num_threads(saved_threads);
  EXPECT_GT(compared, 200);
}

TEST(StateBatch, RaggedBatchEqualsSeparateCallsAnyThreadCount) { batch_vs_separate(false); }

// Short chunks share a row-invariant GEMM and long ones get their own BLAS
// calls, so a chunk's result never depends on the other chunks of the call.
TEST(StateBatch, RaggedBatchEqualsSeparateCallsBitForBit) { batch_vs_separate(true); }
TEST(StateBatch, RaggedBatchEqualsSeparateCallsBitForBitDeployment) { batch_vs_separate(true, Numerics::deployment); }

TEST(StateBatch, InputErrors) {
  std::mt19937 rng(5);
  const Config c = test::small_config();
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  LayerState a = layer.new_state(), b = layer.new_state();
  const Tensor x = test::random_tensor({3, c.hidden_size}, rng);
  auto expect_error = [](auto&& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {
    const Tensor* xs[] = {&x, &x};
    LayerState* sts[] = {&a, &a};
    expect_error([&] { layer.forward_batch(xs, sts); }, "same state is given twice");
  }
  {
    const Tensor bad = test::random_tensor({3, c.hidden_size + 1}, rng);
    const Tensor* xs[] = {&x, &bad};
    LayerState* sts[] = {&a, &b};
    expect_error([&] { layer.forward_batch(xs, sts); }, "chunk 1: expected shape");
  }
  {
    const Tensor bad = test::random_tensor({2, 3, c.hidden_size}, rng);  // a batch axis is not a chunk
    expect_error([&] { layer.forward(bad, a); }, "expected shape");
  }
  {
    const Tensor* xs[] = {&x, &x};
    LayerState* sts[] = {&a};
    expect_error([&] { layer.forward_batch(xs, sts); }, "2 inputs but 1 states");
  }
  {
    LayerState other = LayerState(c, LayerType::hca);
    expect_error([&] { layer.forward(x, other); }, "state was made for another layer");
  }
  EXPECT_EQ(a.position(), 0);  // a rejected call changes nothing
  EXPECT_EQ(b.position(), 0);
}

// A CSA state of an m = 2 config must not reach an m = 4 layer (its pending rows are too short).
TEST(StateBatch, StateOfAnotherConfigIsRejected) {
  std::mt19937 rng(6);
  const Config c = test::small_config();
  Config other = c;
  other.compress_rate_csa = 2;
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  LayerState st(other, LayerType::csa);
  EXPECT_THROW(layer.forward(test::random_tensor({3, c.hidden_size}, rng), st), Error);
}

}  // namespace
}  // namespace dsv4
