// RoPE / YaRN frequencies pinned to the spec and to the conformance files.
#include <gtest/gtest.h>

#include <cmath>

#include "dsv4/safetensors.h"
#include "ops/rope.h"
#include "test_util.h"

namespace dsv4 {
namespace {

TEST(Rope, YarnBandEdgesAtFlashDims) {
  RopeScaling s;  // factor 16, L0 65536, beta 32 / 1
  const auto [lo, hi] = yarn_band(64, 160000.0, s);
  EXPECT_EQ(lo, 15.0);
  EXPECT_EQ(hi, 25.0);
}

TEST(Rope, YarnKeepsFastPairsAndScalesSlowOnes) {
  RopeScaling s;
  const std::vector<float> plain = plain_inv_freq(64, 160000.0), yarn = yarn_inv_freq(64, 160000.0, s);
  for (int i = 0; i < 32; ++i) {
    if (i <= 15) {
      EXPECT_FLOAT_EQ(yarn[i], plain[i]) << i;  // below the band: untouched
    } else if (i >= 25) {
      EXPECT_FLOAT_EQ(yarn[i], plain[i] / 16.0f) << i;  // above: divided by the factor
    } else {
      EXPECT_TRUE(yarn[i] < plain[i] && yarn[i] > plain[i] / 16.0f) << i;
    }
  }
  EXPECT_FLOAT_EQ(plain[0], 1.0f);
  EXPECT_NEAR(plain[1], std::pow(160000.0, -2.0 / 64), 1e-7);
}

// Files store the frequencies of both rope types; ours must match to fp32 rounding.
TEST(Rope, FrequenciesMatchConformanceFiles) {
  for (const char* name : {"small_swa_stateless_s4", "medium_csa_stateless_s100"}) {
    const SafeTensors f = SafeTensors::open(test::data_path(std::string("conformance/") + name + ".safetensors"));
    const LayerSpec spec = layer_spec_from_json_text(f.meta("config"), name);
    const Config& c = spec.config;
    const Tensor main = f.f32("rope.main_inv_freq"), comp = f.f32("rope.compress_inv_freq");
    EXPECT_TRUE(test::all_close(Tensor(main.shape, plain_inv_freq(c.qk_rope_head_dim, c.rope_theta)), main, 0, 1e-6));
    EXPECT_TRUE(test::all_close(Tensor(comp.shape, layer_inv_freq(c, LayerType::csa)), comp, 0, 1e-6)) << name;
    EXPECT_EQ(layer_inv_freq(c, LayerType::hca), layer_inv_freq(c, LayerType::csa));
  }
}

TEST(Rope, InterleavedPairsRotateAndDerotate) {
  const std::vector<float> f = {0.5f, 0.25f};
  std::vector<float> x = {7, 1, 2, 3, 4};  // width 5, R = 4: channel 0 passes through
  rope_apply(x.data(), 5, f, 3);
  EXPECT_EQ(x[0], 7);
  const double a = 1.5;  // 3 · 0.5
  EXPECT_NEAR(x[1], 1 * std::cos(a) - 2 * std::sin(a), 1e-6);
  EXPECT_NEAR(x[2], 2 * std::cos(a) + 1 * std::sin(a), 1e-6);
  rope_apply(x.data(), 5, f, 3, /*inverse=*/true);
  const std::vector<float> back = {7, 1, 2, 3, 4};
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(x[i], back[i], 1e-6);
}

}  // namespace
}  // namespace dsv4
