// Context-parallel training (run under mpirun -np N; ctest runs N = 2, 3, 4):
// context_parallel_forward_train + context_parallel_backward against the
// single-process Layer::forward_train + backward over the whole sequence, on
// random shapes of every layer type and both layouts. The outputs equal a
// single process feeding the blocks one after the other through a state, bit
// for bit; dx and the weights' gradients equal the one-shot backward's within
// 1e-5 (relative to each tensor's largest element, plus 1e-5 relative: a
// gradient summed over tokens cancels), the weights' gradients are the same
// bits on every rank, and every result is the same bits at 1 and 2 threads
// and across runs.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>

#include "dsv4/context_parallel.h"
#include "dsv4/error.h"
#include "mpi_test_util.h"
#include "test_util.h"

namespace dsv4 {
namespace {

using test::Case;
using test::describe;
using test::rank_of;
using test::size_of;
const MPI_Comm kWorld = MPI_COMM_WORLD;

double max_abs(const Tensor& t) {
  double m = 0;
  for (float v : t.data) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

// |ours − ref| ≤ 1e-5·max|ref| + 1e-5·|ref| per element.
::testing::AssertionResult close(const Tensor& ours, const Tensor& ref, double scale) {
  return test::all_close(ours, ref, 1e-5 * scale, 1e-5);
}

// Every weight's gradient, flattened in the weight table's order.
std::vector<float> flat(const LayerGradients& g, const Config& c, LayerType t) {
  std::vector<float> out;
  for_each_weight(g.weights, c, t,
                  [&](const WeightSpec&, const Tensor& w) { out.insert(out.end(), w.data.begin(), w.data.end()); });
  return out;
}

bool same_on_every_rank(const std::vector<float>& v) {
  std::vector<float> root = v;
  MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_FLOAT, 0, kWorld);
  int same = std::memcmp(root.data(), v.data(), v.size() * sizeof(float)) == 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &same, 1, MPI_INT, MPI_MIN, kWorld);
  return same == 1;
}

struct Trained {
  Tensor y;
  LayerGradients g;
};

Trained context_run(const Layer& layer, const Tensor& x, const Tensor& dy, ContextLayout layout) {
  const int rank = rank_of(kWorld), ranks = size_of(kWorld);
  ContextTape tape;
  Trained r;
  r.y =
      context_parallel_forward_train(layer, test::rank_rows(x, ranks, rank, layout), x.dim(0), kWorld, tape, {layout});
  r.g = context_parallel_backward(layer, tape, test::rank_rows(dy, ranks, rank, layout), kWorld);
  return r;
}

// How far from the single process, over the cases (printed, not asserted).
struct Agreement {
  double worst_dx = 0, worst_weight = 0;  // max |cp − single| / max|single| per tensor
  int64_t rows = 0, same_rows = 0;        // dx rows, and those equal bit for bit
};

double scaled_diff(const Tensor& a, const Tensor& b) {
  double m = 0, scale = max_abs(b);
  for (int64_t i = 0; i < a.numel() && scale > 0; ++i)
    m = std::max(m, std::fabs(static_cast<double>(a.data[i]) - b.data[i]) / scale);
  return m;
}

// One case on every rank (the same seed: the same layer and data everywhere).
void check(const Case& k, const Layer& layer, const Tensor& x, const Tensor& dy, Agreement* agreement = nullptr) {
  SCOPED_TRACE(describe(k));
  const int rank = rank_of(kWorld), ranks = size_of(kWorld);
  const int64_t d = k.c.hidden_size;
  Tape tape;
  const Tensor y1 = layer.forward_train(x, tape);
  const LayerGradients g1 = layer.backward(tape, dy);
  LayerState state = layer.new_state();  // the outputs' bits: the blocks through one state
  Tensor chunked({k.seq, d});
  for (const TokenBlock& b : context_blocks(k.seq, ranks, k.layout)) {
    if (b.end == b.begin) continue;
    const Tensor y = layer.forward(test::rows(x, b.begin, b.end - b.begin), state);
    std::copy(y.data.begin(), y.data.end(), chunked.data.begin() + b.begin * d);
  }

  const Trained r = context_run(layer, x, dy, k.layout);
  EXPECT_TRUE(test::same_bits(r.y, test::rank_rows(chunked, ranks, rank, k.layout)));
  EXPECT_TRUE(close(r.y, test::rank_rows(y1, ranks, rank, k.layout), max_abs(y1)));
  EXPECT_TRUE(close(r.g.dx, test::rank_rows(g1.dx, ranks, rank, k.layout), max_abs(g1.dx))) << "dx, rank " << rank;
  for_each_weight(r.g.weights, k.c, k.type, [&](const WeightSpec& s, const Tensor& w) {
    const Tensor& ref = weight(g1.weights, s.id);
    EXPECT_TRUE(close(w, ref, max_abs(ref))) << s.name;
    if (max_abs(ref) == 0) {
      EXPECT_EQ(max_abs(w), 0) << s.name << " (the indexer's, or no entries)";
    }
  });
  EXPECT_TRUE(same_on_every_rank(flat(r.g, k.c, k.type)));
  if (!agreement) return;
  const Tensor dx1 = test::rank_rows(g1.dx, ranks, rank, k.layout);
  agreement->worst_dx = std::max(agreement->worst_dx, scaled_diff(r.g.dx, dx1));
  for (int64_t i = 0; i < dx1.dim(0); ++i, ++agreement->rows)
    agreement->same_rows += std::memcmp(&r.g.dx.data[i * d], &dx1.data[i * d], d * sizeof(float)) == 0;
  for_each_weight(r.g.weights, k.c, k.type, [&](const WeightSpec& s, const Tensor& w) {
    agreement->worst_weight = std::max(agreement->worst_weight, scaled_diff(w, weight(g1.weights, s.id)));
  });
}

// Sequences up to 3 spans of 2N·max(W, 8): blocks shorter than the window and
// than a compressor window, boundaries inside windows, T > k. CSA cases with a
// near-tie in the selection are redrawn (the one-shot and the blocks' forward
// may order two equal scores differently; test::ambiguous_topk).
TEST(ContextBackward, RandomShapesMatchTheSingleProcessBackward) {
  std::mt19937 rng(1919);
  const int ranks = size_of(kWorld);
  std::map<std::string, int> met;
  int redraws = 0;
  Agreement agreement;
  for (int rep = 0; rep < 4; ++rep)
    for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca})
      for (ContextLayout l : {ContextLayout::zigzag, ContextLayout::contiguous}) {
        Case k;
        Tensor x, dy;
        LayerWeights w;
        for (bool ambiguous = true; ambiguous;) {
          k.c = test::random_config(rng);
          k.type = t, k.layout = l;
          k.weights = rng() % 2 ? WeightFormat::bf16 : WeightFormat::f32;
          const int64_t span = 2 * ranks * std::max<int64_t>(k.c.sliding_window, 8);
          k.seq = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(3 * span));
          w = test::random_weights(k.c, t, rng);
          x = test::random_tensor({k.seq, k.c.hidden_size}, rng, 2.0f);
          dy = test::random_tensor(x.shape, rng);
          std::vector<Intermediates> dbg;
          Layer(k.c, t, w).forward(x, &dbg);
          ambiguous = test::ambiguous_topk(k.c, t, dbg);
          ASSERT_LT(redraws += ambiguous, 100);
        }
        const Layer layer(k.c, t, std::move(w), LayerOptions{k.weights});
        const int64_t m = k.c.compress_rate(t), shortest = k.seq / (2 * ranks);
        if (shortest < k.c.sliding_window - 1) ++met["blocks shorter than the window"];
        for (const TokenBlock& b : context_blocks(k.seq, ranks, l))
          if (m > 1 && b.begin % m && b.begin / m < k.seq / m) ++met["a boundary inside a compressor window"];
        if (t == LayerType::csa && k.seq / m > k.c.index_topk) ++met["T > k"];
        check(k, layer, x, dy, &agreement);
      }
  double worst[2] = {agreement.worst_dx, agreement.worst_weight};
  int64_t rows[2] = {agreement.rows, agreement.same_rows};
  MPI_Allreduce(MPI_IN_PLACE, worst, 2, MPI_DOUBLE, MPI_MAX, kWorld);
  MPI_Allreduce(MPI_IN_PLACE, rows, 2, MPI_INT64_T, MPI_SUM, kWorld);
  if (rank_of(kWorld) == 0)
    std::printf(
        "[ cp vs single ] %d ranks: worst |cp - single| / max|single|: dx %.2e, weights %.2e; dx rows bit-identical: "
        "%lld of %lld\n",
        ranks, worst[0], worst[1], static_cast<long long>(rows[1]), static_cast<long long>(rows[0]));
  for (const char* what : {"blocks shorter than the window", "a boundary inside a compressor window", "T > k"})
    EXPECT_GE(met[what], 2) << what;
}

// Blocks past Layer::kPrefillChunk (their forward runs in pieces) and past the
// backward's 512-query chunks; CSA with k = T (every entry selected: no near-tie).
TEST(ContextBackward, LongBlocks) {
  std::mt19937 rng(77);
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    Case k;
    k.c = test::small_config({.window = 16, .rate_csa = 16, .rate_hca = 32});
    k.type = t, k.layout = ContextLayout::contiguous;
    k.seq = (Layer::kPrefillChunk + 77) * size_of(kWorld);
    k.c.index_topk = k.seq / k.c.compress_rate_csa;
    const Layer layer(k.c, t, test::random_weights(k.c, t, rng));
    const Tensor x = test::random_tensor({k.seq, k.c.hidden_size}, rng, 2.0f);
    check(k, layer, x, test::random_tensor(x.shape, rng));
  }
}

// The same bits at 1 and 2 threads and on a second run.
TEST(ContextBackward, IdenticalForAnyThreadCountAndAcrossRuns) {
  std::mt19937 rng(5);
  const int saved = omp_get_max_threads();
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    SCOPED_TRACE(layer_type_name(t));
    const Config c = test::small_config({.window = 8, .rate_csa = 4, .rate_hca = 8, .topk = 3});
    const Layer layer(c, t, test::random_weights(c, t, rng));
    const Tensor x = test::random_tensor({700 + 13 * size_of(kWorld), c.hidden_size}, rng, 2.0f);
    const Tensor dy = test::random_tensor(x.shape, rng);
    omp_set_num_threads(1);
    const Trained a = context_run(layer, x, dy, ContextLayout::zigzag);
    const Trained b = context_run(layer, x, dy, ContextLayout::zigzag);
    omp_set_num_threads(2);
    const Trained c2 = context_run(layer, x, dy, ContextLayout::zigzag);
    omp_set_num_threads(saved);
    for (const Trained* r : {&b, &c2}) {
      EXPECT_TRUE(test::same_bits(r->y, a.y));
      EXPECT_TRUE(test::same_bits(r->g.dx, a.g.dx));
      EXPECT_TRUE(flat(r->g, c, t) == flat(a.g, c, t));
    }
  }
}

template <class F>
void expect_error(F&& f, const std::string& want) {
  try {
    f();
    ADD_FAILURE() << "no error (wanted '" << want << "')";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

TEST(ContextBackward, BadInputIsAnErrorOnEveryRank) {
  const Config c = test::small_config();
  std::mt19937 rng(9);
  const int rank = rank_of(kWorld), ranks = size_of(kWorld);
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  const Tensor x = test::random_tensor({50, c.hidden_size}, rng);
  const Tensor mine = test::rank_rows(x, ranks, rank, ContextLayout::zigzag);
  ContextTape first, second;
  context_parallel_forward_train(layer, mine, 50, kWorld, first);
  context_parallel_forward_train(layer, mine, 50, kWorld, second);
  expect_error(
      [&] {
        context_parallel_backward(layer, first, Tensor({mine.dim(0) + 1, c.hidden_size}), kWorld);
      },
      "dy must be [");
  // One rank's dy is wrong: the others say so, nobody hangs.
  const Tensor bad({rank == ranks - 1 ? 1 : mine.dim(0), c.hidden_size});
  expect_error([&] { context_parallel_backward(layer, first, bad, kWorld); },
               rank == ranks - 1 ? "dy must be [" : "another rank refused its input");
  // A tape from another call on rank 0.
  expect_error([&] { context_parallel_backward(layer, rank == 0 ? second : first, mine, kWorld); },
               "different context_parallel_forward_train calls");
  const Layer other(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  expect_error([&] { context_parallel_backward(other, first, mine, kWorld); }, "another layer");
  expect_error([&] { context_parallel_backward(layer, ContextTape(), mine, kWorld); }, "tape is empty");
  ContextTape t;
  expect_error(
      [&] {
        context_parallel_forward_train(layer, mine, 50, kWorld, t, {ContextLayout::zigzag, true});
      },
      "gather_state");
  const Layer deployed(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng),
                       LayerOptions{WeightFormat::f32, Numerics::deployment});
  expect_error([&] { context_parallel_forward_train(deployed, mine, 50, kWorld, t); }, "no gradient");
}

// The transport-free steps (Layer::block_backward_*) check their order and tape.
TEST(ContextBackward, BlockStepsCheckTheirOrderAndTape) {
  const Config c = test::small_config();
  std::mt19937 rng(11);
  const Layer layer(c, LayerType::hca, test::random_weights(c, LayerType::hca, rng));
  const Tensor x = test::random_tensor({12, c.hidden_size}, rng);
  BlockEntries owned;
  LayerState st = layer.block_state(layer.token_rows(x, 0), 0, 0, 12, owned);
  Tape tape;
  layer.forward_train(x, st, layer.token_rows(x, 0), tape);
  LayerGradients g = layer.zero_gradients();
  BlockGradients bg;
  expect_error([&] { layer.block_backward_compress(tape, bg, g.weights); }, "call block_backward_attend");
  expect_error([&] { layer.backward(tape, x); }, "context-parallel block's");
  expect_error([&] { layer.block_backward_attend(tape, Tensor({11, c.hidden_size}), bg, g.weights); }, "dy");
  layer.block_backward_attend(tape, x, bg, g.weights);
  expect_error([&] { layer.block_backward_project(tape, bg, g.weights); }, "call block_backward_compress");
  Tape one_shot;
  layer.forward_train(x, one_shot);
  expect_error([&] { layer.block_backward_compress(one_shot, bg, g.weights); }, "not a block's");
}

}  // namespace
}  // namespace dsv4
