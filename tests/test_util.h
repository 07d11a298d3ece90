// Shared helpers for the tests: random layers and elementwise comparison.
#pragma once
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "dsv4/config.h"
#include "dsv4/tensor.h"
#include "dsv4/weights.h"

namespace dsv4::test {

std::string data_path(const std::string& rel);  // under tests/data

// Weights of the right shapes for (c, t), values ~ U(-scale, scale) / sqrt(fan_in),
// norms ~ 1 + small noise, sinks ~ U(-1, 1).
LayerWeights random_weights(const Config& c, LayerType t, std::mt19937& rng);
Tensor random_tensor(Shape shape, std::mt19937& rng, float scale = 1.0f);

// A small config (the conformance "small" dims) to vary in tests.
Config small_config();
// Random small dimensions (heads, ranks, window, rates, top-k) for property tests.
Config random_config(std::mt19937& rng);

// ok iff |a - b| <= atol + rtol·|b| for all elements; message names the worst element.
::testing::AssertionResult all_close(const Tensor& ours, const Tensor& ref, double atol, double rtol);
::testing::AssertionResult all_close(const float* ours, const Tensor& ref, double atol, double rtol);

}  // namespace dsv4::test
