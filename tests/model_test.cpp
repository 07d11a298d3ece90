// Model folders built here (sharded and single-file, both naming schemes,
// F32/BF16/F16/FP8+scales) load to exactly the expected fp32 weights.
#include "dsv4/model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "dsv4/error.h"
#include "model_util.h"
#include "test_util.h"

namespace dsv4 {
namespace {

using namespace model_test;
using json = nlohmann::json;
using test::all_close;
using test::data_path;
using ::testing::HasSubstr;

// ---------------------------------------------------------------- names

TEST(ModelNames, OneTableBothSchemes) {
  for (const auto& [hf, ds] : kNames) {
    EXPECT_EQ(checkpoint_name(NamingScheme::hugging_face, 7, hf), "model.layers.7.self_attn." + hf);
    EXPECT_EQ(checkpoint_name(NamingScheme::deepseek, 7, hf), "layers.7.attn." + ds);
  }
  EXPECT_EQ(scale_name(NamingScheme::hugging_face, "model.layers.3.self_attn.q_a_proj.weight"),
            "model.layers.3.self_attn.q_a_proj.weight_scale_inv");
  EXPECT_EQ(scale_name(NamingScheme::deepseek, "layers.3.attn.wq_a.weight"), "layers.3.attn.wq_a.scale");
  EXPECT_THROW(checkpoint_name(NamingScheme::deepseek, 0, "wq_a.weight"), Error);
  EXPECT_EQ(naming_scheme_name(NamingScheme::deepseek), "deepseek");
}

// ---------------------------------------------------------------- exact loading

struct Layout {
  NamingScheme scheme;
  bool sharded;
};

class ModelLayouts : public ::testing::TestWithParam<Layout> {};

TEST_P(ModelLayouts, F32LoadsExactly) {
  const auto [scheme, sharded] = GetParam();
  const Config c = three_layers();
  std::mt19937 rng(11);
  std::vector<LayerWeights> w;
  std::vector<std::vector<NamedTensor>> shards(sharded ? 3 : 1);
  for (int64_t i = 0; i < 3; ++i) {
    w.push_back(test::random_weights(c, c.layer_types[size_t(i)], rng));
    for (NamedTensor& t : f32_tensors(c, c.layer_types[size_t(i)], w.back(), scheme, i))
      shards[sharded ? size_t(i) : 0].push_back(std::move(t));
  }
  // Tensors of the rest of the model are ignored.
  shards[0].push_back(named(is_hf(scheme) ? "model.embed_tokens.weight" : "embed.weight", Tensor({4, 4})));
  shards[0].push_back(
      named(is_hf(scheme) ? "model.layers.0.mlp.gate.weight" : "layers.0.ffn.gate.weight", Tensor({2})));
  shards[0].push_back(
      named(is_hf(scheme) ? "model.layers.1.input_layernorm.weight" : "layers.1.attn_norm.weight", Tensor({2})));
  const fs::path dir = fresh_dir("exact");
  write_folder(dir, c, scheme, shards);

  const Model m = Model::open(dir);
  EXPECT_EQ(m.scheme(), scheme);
  EXPECT_EQ(m.num_layers(), 3);
  EXPECT_EQ(m.num_shards(), sharded ? 3u : 1u);
  EXPECT_EQ(m.config().hidden_size, c.hidden_size);
  for (int64_t i = 0; i < 3; ++i) {
    const LayerType t = c.layer_types[size_t(i)];
    EXPECT_EQ(m.layer_type(i), t);
    EXPECT_TRUE(m.layer_problems(i).empty()) << m.layer_problems(i).front();
    expect_same_weights(m.load_layer(i), w[size_t(i)], c, t);
    const auto ts = m.layer_tensors(i);
    ASSERT_EQ(ts.size(), weight_specs(c, t).size());
    for (const TensorSummary& s : ts) {
      EXPECT_EQ(s.dtype, DType::F32);
      EXPECT_EQ(s.bytes, uint64_t(numel(s.shape)) * 4);
      EXPECT_EQ(s.shard, sharded ? "model-0000" + std::to_string(i + 1) + ".safetensors" : "model.safetensors");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, ModelLayouts,
                         ::testing::Values(Layout{NamingScheme::hugging_face, false},
                                           Layout{NamingScheme::hugging_face, true},
                                           Layout{NamingScheme::deepseek, false}, Layout{NamingScheme::deepseek, true}),
                         [](const auto& info) {
                           return std::string(is_hf(info.param.scheme) ? "hf" : "deepseek") +
                                  (info.param.sharded ? "_sharded" : "_single");
                         });

std::vector<std::byte> to_bytes(const void* p, size_t n) {
  std::vector<std::byte> b(n);
  if (n) std::memcpy(b.data(), p, n);
  return b;
}

// BF16 for the projections, F16 for norms and sinks: exact (the values are
// made representable first by truncating the fp32 bits).
TEST(Model, Bf16AndF16LoadExactly) {
  for (NamingScheme s : {NamingScheme::hugging_face, NamingScheme::deepseek}) {
    Config c = three_layers();
    std::mt19937 rng(5);
    std::vector<NamedTensor> tensors;
    std::vector<LayerWeights> want;
    for (int64_t i = 0; i < 3; ++i) {
      const LayerType t = c.layer_types[size_t(i)];
      LayerWeights w = test::random_weights(c, t, rng);
      for (const WeightSpec& e : weight_specs(c, t)) {
        Tensor& x = test::weight_named(w, e.name);
        const bool half = e.shape.size() == 1;  // norms, sinks: F16
        std::vector<uint16_t> bits(x.data.size());
        for (size_t k = 0; k < bits.size(); ++k) {
          if (half) {  // a multiple of 2^-10 in [-2, 2]: exact in f16 (sign, exponent 15-ish, 10 bits)
            x.data[k] = std::round(x.data[k] * 1024.0f) / 1024.0f;
            const float a = std::fabs(x.data[k]);
            int ex = 0;
            const float f = std::frexp(a, &ex);  // a = f·2^ex
            bits[k] = a == 0 ? 0 : uint16_t(((ex - 1 + 15) << 10) | (uint32_t(std::ldexp(f, 11)) & 0x3ff));
            if (std::signbit(x.data[k])) bits[k] |= 0x8000;
          } else {
            const uint32_t u = std::bit_cast<uint32_t>(x.data[k]) & 0xffff0000u;
            x.data[k] = std::bit_cast<float>(u);
            bits[k] = uint16_t(u >> 16);
          }
        }
        tensors.push_back({full_name(s, i, e.name), half ? DType::F16 : DType::BF16, e.shape,
                           to_bytes(bits.data(), bits.size() * 2)});
      }
      want.push_back(std::move(w));
    }
    const fs::path dir = fresh_dir("bf16");
    write_folder(dir, c, s, {tensors});
    const Model m = Model::open(dir);
    for (int64_t i = 0; i < 3; ++i) expect_same_weights(m.load_layer(i), want[size_t(i)], c, c.layer_types[size_t(i)]);
  }
}

// Independent e4m3fn decoding (bias 7, subnormals, S.1111.111 = NaN).
float e4m3_formula(uint8_t b) {
  const int e = (b >> 3) & 0xf, m = b & 7;
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
  return float(b & 0x80 ? -v : v);
}

// d = 200, r_q = 130: q_a_proj is [130, 200] (2x2 blocks, both edges
// partial), q_b_proj [128, 130], o_b_proj [200, 32]. Scales F32 and BF16.
TEST(Model, Fp8BlockScalesWithPartialEdgeBlocks) {
  for (NamingScheme s : {NamingScheme::hugging_face, NamingScheme::deepseek}) {
    Config c = test::small_config();
    c.hidden_size = 200;
    c.q_lora_rank = 130;
    c.layer_types = {LayerType::csa};
    std::mt19937 rng(3);
    LayerWeights want = test::random_weights(c, LayerType::csa, rng);
    std::vector<NamedTensor> tensors;
    int scale_kind = 0;
    for (const WeightSpec& e : weight_specs(c, LayerType::csa)) {
      Tensor& x = test::weight_named(want, e.name);
      const std::string name = full_name(s, 0, e.name);
      if (e.shape.size() != 2 || e.name.starts_with("compressor.")) {
        tensors.push_back(named(name, x));
        continue;
      }
      const int64_t rows = e.shape[0], cols = e.shape[1];
      const Shape grid{(rows + 127) / 128, (cols + 127) / 128};
      std::vector<float> scale(size_t(numel(grid)));
      std::vector<uint16_t> scale_bf16(scale.size());
      std::uniform_int_distribution<int> u(-8, 3);
      for (size_t k = 0; k < scale.size(); ++k) {  // 1.5·2^n: exact in BF16
        scale[k] = std::ldexp(1.5f, u(rng));
        scale_bf16[k] = uint16_t(std::bit_cast<uint32_t>(scale[k]) >> 16);
      }
      std::vector<uint8_t> q(size_t(rows * cols));
      std::uniform_int_distribution<int> code(0, 0x7e);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          const uint8_t b = uint8_t(code(rng) | (rng() & 0x80));
          q[size_t(i * cols + j)] = b;
          x.data[size_t(i * cols + j)] = e4m3_formula(b) * scale[size_t((i / 128) * grid[1] + j / 128)];
        }
      tensors.push_back({name, DType::F8_E4M3, e.shape, to_bytes(q.data(), q.size())});
      const bool bf16 = scale_kind++ % 2;
      tensors.push_back(
          bf16 ? NamedTensor{scale_of(s, name), DType::BF16, grid, to_bytes(scale_bf16.data(), scale.size() * 2)}
               : named(scale_of(s, name), Tensor(grid, scale)));
    }
    const fs::path dir = fresh_dir("fp8");
    write_folder(dir, c, s, {tensors});
    const Model m = Model::open(dir);
    ASSERT_TRUE(m.layer_problems(0).empty()) << m.layer_problems(0).front();
    expect_same_weights(m.load_layer(0), want, c, LayerType::csa);
    EXPECT_EQ(slot(want, "q_a_proj.weight").shape, (Shape{130, 200}));
  }
}

}  // namespace
}  // namespace dsv4
