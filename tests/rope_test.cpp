// RoPE / YaRN frequencies pinned to the spec and to the conformance files.
#include <gtest/gtest.h>

#include <cmath>

#include "dsv4/safetensors.h"
#include "ops/rope.h"
#include "reference.h"
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

// The naive reference derives its frequencies on its own; both must agree to the
// bit (angles pos·f_i at long positions) on every branch: plain, YaRN, YaRN off.
TEST(Rope, ReferenceFrequenciesEqualTheFastPath) {
  int compared = 0;
  for (int64_t r : {2, 4, 8, 16, 64})
    for (int64_t l0 : {16, 64, 4096, 65536})
      for (double factor : {1.0, 4.0, 16.0})
        for (const char* type : {"yarn", ""}) {
          Config c = test::small_config();
          c.qk_rope_head_dim = r;
          c.rope_scaling.original_max_position_embeddings = l0;
          c.rope_scaling.factor = factor;
          c.rope_scaling.type = type;
          for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
            EXPECT_EQ(reference::rope_inv_freq(c, t), layer_inv_freq(c, t))
                << "R=" << r << " L0=" << l0 << " factor=" << factor << " type '" << type << "' " << layer_type_name(t);
            ++compared;
          }
        }
  EXPECT_EQ(compared, 360);
  // And against the files' own frequencies (plain for SWA, YaRN for CSA).
  for (const char* name : {"small_swa_stateless_s4", "medium_csa_stateless_s100"}) {
    const SafeTensors f = SafeTensors::open(test::data_path(std::string("conformance/") + name + ".safetensors"));
    const Config c = layer_spec_from_json_text(f.meta("config"), name).config;
    const Tensor main = f.f32("rope.main_inv_freq"), comp = f.f32("rope.compress_inv_freq");
    EXPECT_TRUE(test::all_close(Tensor(main.shape, reference::rope_inv_freq(c, LayerType::sliding)), main, 0, 1e-6));
    EXPECT_TRUE(test::all_close(Tensor(comp.shape, reference::rope_inv_freq(c, LayerType::csa)), comp, 0, 1e-6));
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
