// Concurrent callers: one Layer called from several std::threads at once
// (each running its own OpenMP team inside) gives, bit for bit, what serial
// calls give: one-shot forward with intermediates, decode through states,
// forward_batch, attention_map, backward; states handed from thread to thread
// continue bit for bit; states saved and loaded from several threads at once.
// CI runs this binary under ThreadSanitizer too (.ci/run, build-tsan).
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <thread>

#include "dsv4/layer.h"
#include "dsv4/state.h"
#include "test_util.h"

namespace dsv4 {
namespace {

constexpr int kThreads = 4;

using test::rows;
using test::same_bits;

// Everything one caller computes with the layer, in a fixed order.
std::vector<Tensor> work(const Layer& layer, const Tensor& x) {
  std::vector<Tensor> out;
  std::vector<Intermediates> dbg;
  out.push_back(layer.forward(Tensor({1, x.dim(0), x.dim(1)}, x.data), &dbg));
  for (const Tensor* t : {&dbg[0].q, &dbg[0].kv, &dbg[0].compressed_kv, &dbg[0].index_scores}) out.push_back(*t);
  Tensor topk({static_cast<int64_t>(dbg[0].topk.data.size())});
  for (size_t i = 0; i < dbg[0].topk.data.size(); ++i) topk.data[i] = static_cast<float>(dbg[0].topk.data[i]);
  out.push_back(topk);
  LayerState s = layer.new_state(), t = layer.new_state();  // decode: a prefill, then single tokens
  out.push_back(layer.forward(rows(x, 0, 20), s));
  for (int64_t p = 20; p < 26; ++p) out.push_back(layer.forward(rows(x, p, 1), s));
  const Tensor a = rows(x, 0, 9), b = rows(x, 26, 11);  // a ragged serving step
  const Tensor* xs[] = {&a, &b};
  LayerState* ss[] = {&s, &t};
  for (Tensor& y : layer.forward_batch(std::span<const Tensor* const>(xs), ss)) out.push_back(std::move(y));
  out.push_back(layer.attention_map(x).at(0).mass);
  return out;
}

class Concurrency : public ::testing::TestWithParam<std::tuple<LayerType, Numerics>> {};

TEST_P(Concurrency, OneLayerFromManyThreadsEqualsSerialCalls) {
  const auto [type, numerics] = GetParam();
  std::mt19937 rng(17);
  const Config c = test::small_config();
  const Layer layer(c, type, test::random_weights(c, type, rng), LayerOptions{WeightFormat::f32, numerics});
  std::vector<Tensor> xs;
  for (int i = 0; i < kThreads; ++i) xs.push_back(test::random_tensor({37, c.hidden_size}, rng));
  std::vector<std::vector<Tensor>> serial, parallel(kThreads);
  for (const Tensor& x : xs) serial.push_back(work(layer, x));
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      omp_set_num_threads(2);  // each caller's own OpenMP team
      parallel[i] = work(layer, xs[i]);
    });
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_EQ(parallel[i].size(), serial[i].size());
    for (size_t k = 0; k < serial[i].size(); ++k) EXPECT_TRUE(same_bits(parallel[i][k], serial[i][k])) << i << " " << k;
  }
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<LayerType, Numerics>>& info) {
  const char* type[] = {"swa", "csa", "hca"};
  std::string name = type[static_cast<int>(std::get<0>(info.param))];
  name += '_';
  name += numerics_name(std::get<1>(info.param));
  return name;
}

INSTANTIATE_TEST_SUITE_P(TypesAndNumerics, Concurrency,
                         ::testing::Combine(::testing::Values(LayerType::sliding, LayerType::csa, LayerType::hca),
                                            ::testing::Values(Numerics::reference, Numerics::deployment)),
                         case_name);

// Training: backward from several threads at once equals serial backward.
TEST(ConcurrencyTrain, BackwardFromManyThreads) {
  std::mt19937 rng(18);
  const Config c = test::small_config();
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  std::vector<Tensor> xs, dys;
  for (int i = 0; i < kThreads; ++i) {
    xs.push_back(test::random_tensor({1, 29, c.hidden_size}, rng));
    dys.push_back(test::random_tensor({1, 29, c.hidden_size}, rng));
  }
  std::vector<LayerGradients> serial, parallel(kThreads);
  for (int i = 0; i < kThreads; ++i) serial.push_back(layer.backward(xs[i], dys[i]));
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back([&, i] { parallel[i] = layer.backward(xs[i], dys[i]); });
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_TRUE(same_bits(parallel[i].dx, serial[i].dx)) << i;
    EXPECT_TRUE(same_bits(parallel[i].weights.q_b_proj, serial[i].weights.q_b_proj)) << i;
    EXPECT_TRUE(same_bits(parallel[i].weights.compressor->kv_proj, serial[i].weights.compressor->kv_proj)) << i;
  }
}

// A sequence's state moves between threads (a serving engine's worker pool):
// each token on another thread, several sequences at once, then saved and
// loaded from several threads at once; all equal one thread's serial decode.
TEST(ConcurrencyStates, StatesHandedBetweenThreads) {
  std::mt19937 rng(19);
  const Config c = test::small_config();
  const LayerType type = LayerType::csa;
  const Layer layer(c, type, test::random_weights(c, type, rng));
  constexpr int kSeqs = 3, kTokens = 12;
  std::vector<Tensor> xs;
  for (int i = 0; i < kSeqs; ++i) xs.push_back(test::random_tensor({kTokens, c.hidden_size}, rng));
  std::vector<std::vector<Tensor>> serial(kSeqs), moved(kSeqs);
  for (int i = 0; i < kSeqs; ++i) {
    LayerState s = layer.new_state();
    for (int64_t p = 0; p < kTokens; ++p) serial[i].push_back(layer.forward(rows(xs[i], p, 1), s));
  }
  std::vector<LayerState> states(kSeqs, layer.new_state());
  for (int64_t p = 0; p < kTokens; ++p) {  // one new thread per sequence and token
    std::vector<std::thread> threads;
    for (int i = 0; i < kSeqs; ++i)
      threads.emplace_back([&, i, p] { moved[i].push_back(layer.forward(rows(xs[i], p, 1), states[i])); });
    for (std::thread& t : threads) t.join();
  }
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("dsv4_conc_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::vector<LayerState> loaded(kSeqs);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSeqs; ++i)
    threads.emplace_back([&, i] {
      const std::filesystem::path f = dir / (std::to_string(i) + ".state");
      save_state(states[i], c, f);
      loaded[i] = load_state(c, type, f);
    });
  for (std::thread& t : threads) t.join();
  std::filesystem::remove_all(dir);
  const Tensor next = test::random_tensor({1, c.hidden_size}, rng);
  for (int i = 0; i < kSeqs; ++i) {
    for (int64_t p = 0; p < kTokens; ++p) EXPECT_TRUE(same_bits(moved[i][p], serial[i][p])) << i << " " << p;
    EXPECT_TRUE(same_bits(layer.forward(next, loaded[i]), layer.forward(next, states[i]))) << i;
  }
}

}  // namespace
}  // namespace dsv4
