// WeightFormat::native: projection matrices kept as stored (FP8 E4M3 + block
// scales, BF16) give the numbers of the f32 layer on the dequantised weights.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <unistd.h>
#include <cmath>

#include <filesystem>
#include <fstream>

#include "common/dtype.h"
#include "dsv4/layer.h"
#include "dsv4/model.h"
#include "dsv4/random.h"
#include "ops/blas.h"
#include "ops/weight_decode.h"
#include "test_util.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

// Dims with full and partial 128x128 scale blocks in every projection and
// fused matrices of several segments and 512-row GEMM tiles.
Config block_config() {
  return test::small_config({.hidden_size = 272,
                             .heads = 6,
                             .head_dim = 96,
                             .rope_dims = 16,
                             .q_rank = 160,
                             .o_rank = 80,
                             .index_dim = 32,
                             .topk = 5});
}

LayerWeights released(const Config& c, LayerType t, uint64_t seed) {
  LayerWeights w = random_layer_weights(c, t, seed);
  store_as_released(w, t);
  return w;
}

// max |a - b| / max |b| over the elements.
double rel_diff(const Tensor& a, const Tensor& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.data.size(); ++i) {
    d = std::max(d, std::fabs(static_cast<double>(a.data[i]) - b.data[i]));
    m = std::max(m, std::fabs(static_cast<double>(b.data[i])));
  }
  return m > 0 ? d / m : d;
}

TEST(NativeWeights, RowsDecodeEveryCodeLikeTheScalarPath) {
  std::vector<uint8_t> codes(256);
  for (int i = 0; i < 256; ++i) codes[size_t(i)] = static_cast<uint8_t>(i == 0x7F || i == 0xFF ? 0 : i);  // no NaN
  const float scales[2] = {0.0078125f, 3.0e-3f};  // a UE8M0 scale and an fp32 one
  const vec::Fp8Row row{codes.data(), scales};
  for (int i = 0; i < 256; ++i) {
    const float want = e4m3fn_to_f32(codes[size_t(i)]) * (i < 128 ? 0.0078125f : 3.0e-3f);
    EXPECT_EQ(row.at(i), want) << "code " << i;  // exactly the dequantised weight
  }
#ifdef DSV4_AVX2
  for (int i = 0; i < 256; i += 8) {
    float lanes[8];
    _mm256_storeu_ps(lanes, row.load8(i));
    for (int l = 0; l < 8; ++l) EXPECT_EQ(lanes[l], row.at(i + l)) << "code " << i + l;
  }
  std::vector<uint16_t> halfs(64);
  for (int i = 0; i < 64; ++i)  // normals and subnormals of both signs (exponent never all ones)
    halfs[size_t(i)] = static_cast<uint16_t>((i * 1021 + 3) & 0xBBFF);
  const vec::F16Row h{halfs.data()};
  for (int i = 0; i < 64; i += 8) {
    float lanes[8];
    _mm256_storeu_ps(lanes, h.load8(i));
    for (int l = 0; l < 8; ++l) EXPECT_EQ(lanes[l], f16_to_f32(halfs[size_t(i + l)]));
  }
#endif
}

// The row-invariant kernel over stored rows against the same kernel over the
// widened fp32 rows: bit for bit for every row count m (so a batch equals
// separate calls), with power-of-two and fp32 scales, subnormal codes, ragged
// k, a row offset inside the scale grid, and activations whose pre-scaling
// would overflow fp32 (x·2^120·scale > 2^128 while x·w is finite: the kernel
// must notice and widen instead).
TEST(NativeWeights, RowKernelEqualsWidenedWeightsForAnyRowCount) {
  std::mt19937 rng(11);
  struct Case {
    int64_t n, k, row_base;
    bool pow2;
    float x_scale;
  };
  const Case cases[] = {{70, 264, 0, true, 1.0f},     {131, 300, 64, true, 1.0f}, {9, 7, 0, true, 1.0f},
                        {40, 1037, 100, false, 1.0f}, {66, 256, 0, true, 1e7f},   {33, 136, 5, true, 1e-30f}};
  for (const Case& cs : cases) {
    SCOPED_TRACE("n " + std::to_string(cs.n) + " k " + std::to_string(cs.k) + " base " + std::to_string(cs.row_base));
    const int64_t kb = (cs.k + 127) / 128, rb = (cs.row_base + cs.n + 127) / 128;
    std::vector<uint8_t> codes(size_t(cs.n * cs.k));
    for (auto& c : codes) {
      c = static_cast<uint8_t>(rng() & 0xFF);
      if ((c & 0x7F) == 0x7F) c = 0;  // no NaN codes (the loader refuses them)
    }
    std::vector<float> scales(size_t(rb * kb));
    for (auto& f : scales)
      f = cs.pow2 ? std::ldexp(1.0f, int(rng() % 12) - 14) : std::uniform_real_distribution<float>(1e-4f, 1e-2f)(rng);
    WeightRows fp8;
    fp8.dtype = DType::F8_E4M3, fp8.data = codes.data(), fp8.ld = cs.k;
    fp8.scale = scales.data(), fp8.scale_ld = kb, fp8.row_base = cs.row_base;
    std::vector<float> wide(size_t(cs.n * cs.k));
    widen_rows(fp8, cs.n, cs.k, wide.data());
    for (int64_t i = 0; i < cs.n * cs.k; ++i) {  // widen_rows gives the dequantised weights
      const int64_t j = i / cs.k, col = i % cs.k;
      ASSERT_EQ(wide[size_t(i)],
                e4m3fn_to_f32(codes[size_t(i)]) * scales[size_t(((cs.row_base + j) / 128) * kb + col / 128)]);
    }
    std::vector<uint16_t> bf(wide.size());
    for (size_t i = 0; i < wide.size(); ++i) bf[i] = f32_to_bf16(wide[i]);
    std::vector<float> bf_wide(wide.size());
    for (size_t i = 0; i < wide.size(); ++i) bf_wide[i] = bf16_to_f32(bf[i]);
    WeightRows bf16;
    bf16.dtype = DType::BF16, bf16.data = bf.data(), bf16.ld = cs.k;
    for (int64_t m : {1, 2, 3, 4, 5, 9, 17}) {
      SCOPED_TRACE("m " + std::to_string(m));
      Tensor x = test::random_tensor({m, cs.k}, rng, cs.x_scale);
      std::vector<float> got(size_t(m * cs.n)), want(got.size()), one(size_t(cs.n));
      gemm_nt_rows_w(m, cs.n, cs.k, x.ptr(), cs.k, fp8, got.data(), cs.n);
      gemm_nt_rows(m, cs.n, cs.k, x.ptr(), cs.k, wide.data(), cs.k, want.data(), cs.n);
      ASSERT_EQ(got, want);
      for (int64_t r = 0; r < m; ++r) {  // each row alone: the same bits
        gemm_nt_rows(1, cs.n, cs.k, x.ptr() + r * cs.k, cs.k, wide.data(), cs.k, one.data(), cs.n);
        ASSERT_TRUE(std::equal(one.begin(), one.end(), want.begin() + r * cs.n)) << "row " << r;
      }
      gemm_nt_rows_w(m, cs.n, cs.k, x.ptr(), cs.k, bf16, got.data(), cs.n);
      gemm_nt_rows(m, cs.n, cs.k, x.ptr(), cs.k, bf_wide.data(), cs.k, want.data(), cs.n);
      ASSERT_EQ(got, want);
      // Against a double-precision dot product (a kernel that cannot be wrong and still agree).
      for (int64_t r = 0; r < m; r += 2)
        for (int64_t j = 0; j < cs.n; j += 5) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < cs.k; ++i) {
            ref += double(x.data[size_t(r * cs.k + i)]) * wide[size_t(j * cs.k + i)];
            mag += std::fabs(double(x.data[size_t(r * cs.k + i)]) * wide[size_t(j * cs.k + i)]);
          }
          gemm_nt_rows_w(m, cs.n, cs.k, x.ptr(), cs.k, fp8, got.data(), cs.n);
          ASSERT_LE(std::fabs(got[size_t(r * cs.n + j)] - ref), 1e-6 * mag + 1e-37) << "row " << r << " col " << j;
        }
    }
  }
}

TEST(NativeWeights, SameNumbersAsDequantisedF32) {
  const Config c = block_config();
  std::mt19937 rng(5);
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
    SCOPED_TRACE(std::string(layer_type_name(t)));
    const LayerWeights w = released(c, t, 17);
    const Layer native(c, t, w, {WeightFormat::native});
    const Layer f32(c, t, w, {WeightFormat::f32});
    EXPECT_LT(native.weight_bytes() * 2, f32.weight_bytes());  // FP8 a quarter, BF16 a half
    const Tensor x = test::random_tensor({1, 200, c.hidden_size}, rng);
    // Prefill: the same sgemm tiles over the same fp32 values, cut per segment.
    EXPECT_LE(rel_diff(native.forward(x), f32.forward(x)), 1e-6);
    // Decode: the row-invariant kernel, one dot product per element, bit for bit.
    LayerState sn = native.new_state(), sf = f32.new_state();
    const int64_t d = c.hidden_size;
    for (int64_t i = 0; i < 40; ++i) {
      const Tensor tok({1, d}, std::vector<float>(x.data.begin() + i * d, x.data.begin() + (i + 1) * d));
      const Tensor a = native.forward(tok, sn), b = f32.forward(tok, sf);
      ASSERT_EQ(a.data, b.data) << "token " << i;
    }
  }
}

// Named tensors in their stored dtypes (what a state_dict of a checkpoint holds):
// kept with keep_stored, widened without, both as the LayerWeights they came from.
TEST(NativeWeights, FromStoredNamedTensors) {
  const Config c = block_config();
  std::mt19937 rng(8);
  const LayerWeights w = released(c, LayerType::csa, 21);
  std::vector<std::pair<std::string, RawTensor>> given;
  for (const auto& [name, m] : w.stored) {  // UE8M0 scales as ".scale", the block layout of V4
    const std::string scale = name.substr(0, name.size() - 7) + ".scale";
    for (NamedTensor& t : checkpoint_tensors(name, scale, m, DType::F8_E8M0))
      given.emplace_back(t.name, RawTensor{t.dtype, t.shape, std::move(t.bytes)});
  }
  LayerWeights rest = w;  // the non-matrix tensors as F32
  rest.stored.clear();
  for (const char* name :
       {"q_a_norm.weight", "kv_norm.weight", "sinks", "compressor.position_bias", "compressor.kv_norm.weight",
        "compressor.indexer.position_bias", "compressor.indexer.kv_norm.weight"}) {
    NamedTensor t = named(name, test::weight_named(rest, name));
    given.emplace_back(name, RawTensor{t.dtype, t.shape, std::move(t.bytes)});
  }
  const Tensor x = test::random_tensor({1, 150, c.hidden_size}, rng);
  const Layer direct(c, LayerType::csa, w, {WeightFormat::native});
  const Layer kept(c, LayerType::csa, layer_weights_from_stored(given, c, LayerType::csa, true),
                   {WeightFormat::native});
  const Layer widened(c, LayerType::csa, layer_weights_from_stored(given, c, LayerType::csa, false));
  EXPECT_EQ(kept.weight_bytes(), direct.weight_bytes());
  EXPECT_GT(widened.weight_bytes(), 2 * kept.weight_bytes());
  EXPECT_EQ(kept.forward(x).data, direct.forward(x).data);
  EXPECT_EQ(widened.forward(x).data, Layer(c, LayerType::csa, w).forward(x).data);
  // A U8 weight is E4M3 codes when it has scales; without them it is refused, naming both spellings.
  auto codes = given;
  for (auto& [name, r] : codes)
    if (r.dtype == DType::F8_E4M3) r.dtype = DType::U8;
  EXPECT_EQ(Layer(c, LayerType::csa, layer_weights_from_stored(codes, c, LayerType::csa, true), {WeightFormat::native})
                .forward(x)
                .data,
            direct.forward(x).data);
  std::erase_if(codes, [](const auto& n) { return n.first == "kv_proj.scale"; });
  EXPECT_THAT([&] { layer_weights_from_stored(codes, c, LayerType::csa, true); },
              ThrowsMessage<Error>(HasSubstr("'kv_proj.weight' (U8): not a weight dtype")));
}

TEST(NativeWeights, BitIdenticalForAnyThreadCount) {
  const Config c = block_config();
  std::mt19937 rng(6);
  const Layer layer(c, LayerType::csa, released(c, LayerType::csa, 3), {WeightFormat::native});
  const Tensor x = test::random_tensor({2, 300, c.hidden_size}, rng);
  const int n0 = omp_get_max_threads();
  std::vector<Tensor> outs;
  for (int n : {1, 2, 3}) {
    omp_set_num_threads(n);
    outs.push_back(layer.forward(x));
  }
  omp_set_num_threads(n0);
  EXPECT_EQ(outs[0].data, outs[1].data);
  EXPECT_EQ(outs[0].data, outs[2].data);
}

TEST(NativeWeights, ServingBatchEqualsSeparateBitForBit) {
  const Config c = block_config();
  std::mt19937 rng(9);
  const Layer layer(c, LayerType::csa, released(c, LayerType::csa, 4), {WeightFormat::native});
  const int64_t d = c.hidden_size, b = 5;  // odd: pairs of rows and one alone in the kernel
  std::vector<LayerState> sep, bat;
  for (int64_t i = 0; i < b; ++i) {
    const Tensor prompt = test::random_tensor({10 + 7 * i, d}, rng);
    sep.push_back(layer.new_state());
    layer.forward(prompt, sep.back());
    bat.push_back(sep.back().clone());
  }
  for (int step = 0; step < 3; ++step) {
    std::vector<Tensor> toks;
    for (int64_t i = 0; i < b; ++i) toks.push_back(test::random_tensor({1, d}, rng));
    std::vector<const Tensor*> xs;
    std::vector<LayerState*> ss;
    for (int64_t i = 0; i < b; ++i) xs.push_back(&toks[size_t(i)]), ss.push_back(&bat[size_t(i)]);
    const std::vector<Tensor> ys = layer.forward_batch(xs, ss);
    for (int64_t i = 0; i < b; ++i) EXPECT_EQ(ys[size_t(i)].data, layer.forward(toks[size_t(i)], sep[size_t(i)]).data);
  }
}

TEST(NativeWeights, StoredMatrixErrorsNameTheWeight) {
  const Config c = test::small_config();
  LayerWeights w = released(c, LayerType::hca, 1);
  auto expect = [&](LayerWeights bad, const std::string& phrase) {
    try {
      Layer(c, LayerType::hca, std::move(bad), {WeightFormat::native});
      ADD_FAILURE() << "no error for " << phrase;
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(phrase));
    }
  };
  LayerWeights a = w;
  a.stored["kv_proj.weight"].data[5] = std::byte(0x7F);  // E4M3 NaN
  expect(a, "weight 'kv_proj.weight' (F8_E4M3) has 1 non-finite");
  LayerWeights b = w;
  b.stored["q_a_proj.weight"].scale = Tensor({2, 2});
  expect(b, "weight 'q_a_proj.weight' (F8_E4M3): scale grid has shape [2, 2], expected [1, 1]");
  LayerWeights d = w;
  d.stored["o_b_proj.weight"].shape = {3, 3};
  expect(d, "weight 'o_b_proj.weight' (F8_E4M3) has shape [3, 3]");
  LayerWeights e = w;
  e.stored["sinks"] = StoredMatrix{};
  expect(e, "stored weight 'sinks' is not a projection matrix");
}

// A one-layer model folder with the layer's matrices as stored (scales F32 or F8_E8M0).
fs::path write_model(const Config& c0, LayerType t, const LayerWeights& w, NamingScheme s, bool e8m0_scales) {
  Config c = c0;
  c.layer_types = {t};
  const fs::path dir = fs::temp_directory_path() / ("dsv4_native_" + std::to_string(::getpid()) + "_" +
                                                    std::to_string(int(s)) + std::to_string(e8m0_scales));
  fs::create_directories(dir);
  std::vector<NamedTensor> ts;
  for (const WeightSpec& e : weight_specs(c, t)) {
    const std::string name = checkpoint_name(s, 0, e.name);
    auto it = w.stored.find(e.name);
    if (it == w.stored.end()) {
      ts.push_back(named(name, test::weight_named(w, e.name)));
      continue;
    }
    for (NamedTensor& t :
         checkpoint_tensors(name, scale_name(s, name), it->second, e8m0_scales ? DType::F8_E8M0 : DType::F32))
      ts.push_back(std::move(t));
  }
  write_safetensors(dir / "model.safetensors", ts);
  std::ofstream(dir / "config.json") << R"({"hidden_size": )" << c.hidden_size << R"(, "num_attention_heads": )"
                                     << c.num_attention_heads << R"(, "head_dim": )" << c.head_dim
                                     << R"(, "qk_rope_head_dim": )" << c.qk_rope_head_dim << R"(, "q_lora_rank": )"
                                     << c.q_lora_rank << R"(, "o_groups": )" << c.o_groups << R"(, "o_lora_rank": )"
                                     << c.o_lora_rank << R"(, "sliding_window": )" << c.sliding_window
                                     << R"(, "compress_rate_csa": )" << c.compress_rate_csa
                                     << R"(, "compress_rate_hca": )" << c.compress_rate_hca << R"(, "index_n_heads": )"
                                     << c.index_n_heads << R"(, "index_head_dim": )" << c.index_head_dim
                                     << R"(, "index_topk": )" << c.index_topk << R"(, "rope_theta": 10000.0,
      "compress_rope_theta": 160000.0, "rms_norm_eps": 1e-6, "rope_scaling": {"type": "yarn", "factor": 16.0,
      "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0},
      "layer_types": [")" << layer_type_name(t)
                                     << R"("]})";
  return dir;
}

TEST(NativeWeights, ModelFoldersBothSchemesBothScaleDtypes) {
  const Config c = block_config();
  std::mt19937 rng(8);
  const LayerWeights w = released(c, LayerType::csa, 21);
  const Tensor x = test::random_tensor({1, 50, c.hidden_size}, rng);
  const Layer want(c, LayerType::csa, w, {WeightFormat::native});
  for (NamingScheme s : {NamingScheme::hugging_face, NamingScheme::deepseek})
    for (bool e8m0 : {false, true}) {
      SCOPED_TRACE(std::string(naming_scheme_name(s)) + (e8m0 ? " E8M0 scales" : " F32 scales"));
      const fs::path dir = write_model(c, LayerType::csa, w, s, e8m0);
      const Model m = Model::open(dir);
      const Layer native = m.layer(0, {WeightFormat::native});
      const Layer f32 = m.layer(0, {WeightFormat::f32});
      EXPECT_EQ(native.weight_bytes(), want.weight_bytes());
      EXPECT_EQ(m.layer_bytes(0, WeightFormat::native), native.weight_bytes());  // what `dsv4 info` shows
      EXPECT_EQ(m.layer_bytes(0, WeightFormat::f32), f32.weight_bytes());
      EXPECT_EQ(m.layer_bytes(0, WeightFormat::bf16), m.layer(0, {WeightFormat::bf16}).weight_bytes());
      EXPECT_EQ(native.forward(x).data, want.forward(x).data);
      EXPECT_LE(rel_diff(native.forward(x), f32.forward(x)), 1e-6);
      const LayerWeights lw = m.load_layer(0, WeightFormat::native);
      EXPECT_EQ(lw.stored.at("q_a_proj.weight").dtype, DType::F8_E4M3);
      EXPECT_EQ(lw.stored.at("compressor.kv_proj.weight").dtype, DType::BF16);
      EXPECT_TRUE(lw.q_a_proj.empty());
      fs::remove_all(dir);
    }
}

}  // namespace
}  // namespace dsv4
