// Context parallelism on MPI (run under mpirun -np N; ctest runs N = 2, 3, 4):
// random shapes, all layer types, both numerics, both layouts. The outputs of
// every rank's blocks must equal, bit for bit, a single process feeding the
// same blocks one after the other through a state, and the state gathered on
// root must save to the same bytes as that process's.
#include <mpi.h>

#include <cstdio>
#include <limits>
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

std::string state_bytes_of(const LayerState& s, const Config& c, const std::string& tag) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("dsv4_cp_" + tag + "_" + std::to_string(rank_of(MPI_COMM_WORLD)) + ".state");
  save_state(s, c, path);
  std::string bytes = test::slurp(path);
  std::filesystem::remove(path);
  return bytes;
}

// One case on every rank: the same seed, so every rank builds the same layer and input.
void check(const Case& k, std::mt19937& rng) {
  SCOPED_TRACE(describe(k));
  const MPI_Comm comm = MPI_COMM_WORLD;
  const int rank = rank_of(comm), ranks = size_of(comm);
  const Layer layer(k.c, k.type, test::random_weights(k.c, k.type, rng), LayerOptions{k.weights, k.numerics});
  const int64_t d = k.c.hidden_size;
  const Tensor x = test::random_tensor({k.seq, d}, rng);

  // The single process: the blocks in position order through one state.
  LayerState single = layer.new_state();
  Tensor expected({k.seq, d});
  for (const TokenBlock& b : context_blocks(k.seq, ranks, k.layout)) {
    if (b.end == b.begin) continue;
    const Tensor y = layer.forward(test::rows(x, b.begin, b.end - b.begin), single);
    std::copy(y.data.begin(), y.data.end(), expected.data.begin() + b.begin * d);
  }

  std::vector<float> mine;
  for (const TokenBlock& b : rank_blocks(k.seq, ranks, rank, k.layout))
    mine.insert(mine.end(), x.data.begin() + b.begin * d, x.data.begin() + b.end * d);
  const auto n = static_cast<int64_t>(mine.size()) / d;
  LayerState gathered;
  ContextStats stats;
  const Tensor y = context_parallel_forward(layer, TensorView(mine.data(), {n, d}), k.seq, comm,
                                            {k.layout, /*gather_state=*/true, /*root=*/0}, &gathered, &stats);
  int64_t row = 0;
  for (const TokenBlock& b : rank_blocks(k.seq, ranks, rank, k.layout)) {
    const int64_t len = b.end - b.begin;
    EXPECT_TRUE(test::same_bits(test::rows(y, row, len), test::rows(expected, b.begin, len)))
        << "rank " << rank << " block [" << b.begin << ", " << b.end << ")";
    row += len;
  }
  if (rank == 0) {
    EXPECT_EQ(gathered.position(), k.seq);
    EXPECT_TRUE(state_bytes_of(gathered, k.c, "cp") == state_bytes_of(single, k.c, "single"))
        << "the gathered state differs from the single process's";
    // Decoding continues on root as after a single-process prefill.
    const Tensor next = test::random_tensor({1, d}, rng);
    EXPECT_TRUE(test::same_bits(layer.forward(next, gathered), layer.forward(next, single)));
  } else {
    test::random_tensor({1, d}, rng);  // keep the ranks' generators in step
  }
  EXPECT_GE(stats.bytes_received, 0);
}

Case random_case(std::mt19937& rng, LayerType type, Numerics numerics, ContextLayout layout) {
  Case k;
  k.c = test::random_config(rng);
  if (numerics == Numerics::deployment)  // a power of two >= R
    k.c.index_head_dim = std::max<int64_t>(k.c.qk_rope_head_dim, int64_t{8} << (rng() % 3));
  k.type = type, k.numerics = numerics, k.layout = layout;
  k.weights = rng() % 2 ? WeightFormat::bf16 : WeightFormat::f32;
  // Blocks shorter than the window and than a compressor window, and longer ones.
  const int64_t span = 2 * size_of(MPI_COMM_WORLD) * std::max<int64_t>(k.c.sliding_window, 8);
  k.seq = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(3 * span));
  return k;
}

TEST(ContextParallel, RandomShapesEqualSingleProcessBitForBit) {
  std::mt19937 rng(19);
  for (int rep = 0; rep < 6; ++rep)
    for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca})
      for (Numerics n : {Numerics::reference, Numerics::deployment})
        for (ContextLayout l : {ContextLayout::zigzag, ContextLayout::contiguous})
          check(random_case(rng, t, n, l), rng);
}

// Blocks past kPrefillChunk (the forward splits them), many entries (T > k), V4-like rates.
TEST(ContextParallel, LongBlocks) {
  std::mt19937 rng(7);
  for (LayerType t : {LayerType::csa, LayerType::hca}) {
    Case k;
    k.c = test::small_config({.window = 16, .rate_csa = 4, .rate_hca = 32, .topk = 8});
    k.type = t, k.seq = 2 * Layer::kPrefillChunk * size_of(MPI_COMM_WORLD) + 37;
    check(k, rng);
  }
}

TEST(ContextParallel, EmptyAndTinySequences) {
  std::mt19937 rng(3);
  for (int64_t seq : {0, 1, 2, 5})
    for (ContextLayout l : {ContextLayout::zigzag, ContextLayout::contiguous}) {
      Case k;
      k.c = test::small_config();
      k.type = LayerType::csa, k.layout = l, k.seq = seq;
      check(k, rng);
    }
}

TEST(ContextParallel, WrongInputShapeIsAnError) {
  const Config c = test::small_config();
  std::mt19937 rng(1);
  const Layer layer(c, LayerType::hca, test::random_weights(c, LayerType::hca, rng));
  const Tensor x({3, c.hidden_size});  // every rank claims 3 tokens of a 1000-token sequence
  try {
    context_parallel_forward(layer, x, 1000, MPI_COMM_WORLD);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x must be ["), std::string::npos) << e.what();
  }
}

// One rank's bad input: that rank names it, the others say another rank refused; none hangs.
TEST(ContextParallel, OneRanksBadInputStopsEveryRank) {
  const Config c = test::small_config();
  std::mt19937 rng(4);
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  const int rank = rank_of(MPI_COMM_WORLD), ranks = size_of(MPI_COMM_WORLD);
  const int64_t seq = 40;
  int64_t n = 0;
  for (const TokenBlock& b : rank_blocks(seq, ranks, rank, ContextLayout::zigzag)) n += b.end - b.begin;
  Tensor x = test::random_tensor({n, c.hidden_size}, rng);
  if (rank == ranks - 1) x.data[0] = std::numeric_limits<float>::quiet_NaN();
  try {
    context_parallel_forward(layer, x, seq, MPI_COMM_WORLD);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string want = rank == ranks - 1 ? "token_rows: input hidden_states" : "another rank refused its input";
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

// The transport-free pieces name what is wrong.
TEST(ContextParallel, BlockStateChecksItsRows) {
  const Config c = test::small_config();  // W = 8, m = 4
  std::mt19937 rng(2);
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  EXPECT_EQ(layer.context_first(10), 3);  // the window: [3, 10); the compressors: [4, 10) (series A of [4, 8))
  const Tensor rows({5, layer.token_row_width()});
  BlockEntries owned;
  try {
    layer.block_state(rows, 5, 10, 10, owned);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs its rows from 3"), std::string::npos) << e.what();
  }
  try {
    layer.token_rows(Tensor({2, c.hidden_size + 1}), 0);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_rows: x must be"), std::string::npos) << e.what();
  }
  LayerState st = layer.new_state();
  try {
    layer.forward_projected(Tensor({2, layer.token_row_width()}), st);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("forward_projected: rows must be [n, " +
                                         std::to_string(layer.projected_width()) + "]"),
              std::string::npos)
        << e.what();
  }
}

// Options every rank gets wrong alike, and ranks that disagree on seq: every rank throws, none hangs.
TEST(ContextParallel, RootAndSeqAreCheckedOnEveryRank) {
  const Config c = test::small_config();
  std::mt19937 rng(5);
  const Layer layer(c, LayerType::hca, test::random_weights(c, LayerType::hca, rng));
  const int rank = rank_of(MPI_COMM_WORLD), ranks = size_of(MPI_COMM_WORLD);
  auto mine = [&](int64_t seq) {
    int64_t n = 0;
    for (const TokenBlock& b : rank_blocks(seq, ranks, rank, ContextLayout::zigzag)) n += b.end - b.begin;
    return test::random_tensor({n, c.hidden_size}, rng);
  };
  LayerState st = layer.new_state();
  const auto expect_error = [](auto&& call, const std::string& want) {
    try {
      call();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  const Tensor x = mine(30);
  expect_error(
      [&] {
        context_parallel_forward(layer, x, 30, MPI_COMM_WORLD, {ContextLayout::zigzag, true, ranks}, &st);
      },
      "root " + std::to_string(ranks) + " is not a rank of " + std::to_string(ranks));
  const int64_t seq = rank == ranks - 1 ? 31 : 30;
  const Tensor y = mine(seq);
  expect_error([&] { context_parallel_forward(layer, y, seq, MPI_COMM_WORLD); },
               "the ranks disagree on seq (from 30 to 31)");
}

}  // namespace
}  // namespace dsv4

namespace {

// The other ranks print only their failures, named by rank.
class RankFailures : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailures(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                   r.message());
  }

 private:
  int rank_;
};

}  // namespace

// gtest under MPI: every rank runs every test; rank 0 prints the report; the
// exit status is the worst rank's.
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (const int rank = dsv4::test::rank_of(MPI_COMM_WORLD); rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailures(rank));
  }
  int rc = RUN_ALL_TESTS();
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return rc;
}
