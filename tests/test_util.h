// Shared helpers for the tests: random layers and elementwise comparison.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>

#include "dsv4/config.h"
#include "dsv4/layer.h"
#include "dsv4/tensor.h"
#include "dsv4/weights.h"

namespace dsv4::test {

std::string data_path(const std::string& rel);  // under tests/data

// The dsv4 binary next to the test binary's folder (build/tests/dsv4_tests -> build/dsv4).
std::filesystem::path dsv4_binary();
// Runs a shell command with stdout and stderr to `log`; returns std::system's status.
int sh(const std::string& cmd, const std::filesystem::path& log);
std::string slurp(const std::filesystem::path& p);

// Weights of the right shapes for (c, t), values ~ U(-scale, scale) / sqrt(fan_in),
// norms ~ 1 + small noise, sinks ~ U(-1, 1).
LayerWeights random_weights(const Config& c, LayerType t, std::mt19937& rng);
Tensor random_tensor(Shape shape, std::mt19937& rng, float scale = 1.0f);

// w's tensor of a spec name (the weight table's weight(), by name).
Tensor& weight_named(LayerWeights& w, const std::string& name);
const Tensor& weight_named(const LayerWeights& w, const std::string& name);

// A small config: the conformance "small" dims, any of them overridden by
// name, e.g. small_config({.hidden_size = 16, .heads = 2}) (fields in this order).
struct Dims {
  int64_t hidden_size = 64, heads = 4, head_dim = 32, rope_dims = 8, q_rank = 32, o_groups = 2, o_rank = 16, window = 8,
          rate_csa = 4, rate_hca = 8, index_heads = 4, index_dim = 16, topk = 3;
};
Config small_config(const Dims& dims = {});
// Random small dimensions (heads, ranks, window, rates, top-k) for property tests.
Config random_config(std::mt19937& rng);

// True if some query of a CSA chunk (first query at position p0) has more
// eligible entries than k and its k-th and (k+1)-th best scores in `d` are too
// close for two fp32 evaluation orders to agree on: the top-k set is then
// ill-posed, so tests redraw such cases, as the golden generator does.
bool ambiguous_topk(const Config& c, LayerType t, const Intermediates& d, int64_t p0 = 0);
bool ambiguous_topk(const Config& c, LayerType t, const std::vector<Intermediates>& batch);

// Same shape and the same bits in every element.
bool same_bits(const Tensor& a, const Tensor& b);
// Rows [from, from + n) of x [S, d], as [n, d].
Tensor rows(const Tensor& x, int64_t from, int64_t n);

// ok iff |a - b| <= atol + rtol·|b| for all elements; message names the worst element.
::testing::AssertionResult all_close(const Tensor& ours, const Tensor& ref, double atol, double rtol);
::testing::AssertionResult all_close(const float* ours, const Tensor& ref, double atol, double rtol);

}  // namespace dsv4::test
