// Model folders built here (sharded and single-file, both naming schemes,
// F32/BF16/F16/FP8+scales) load to exactly the expected fp32 weights;
// conformance cases re-packed as model folders reproduce their outputs
// (through Model + Layer and through the dsv4 binary); bad folders, indexes,
// shards and tensors give errors naming the file and tensor.
#include "dsv4/model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "dsv4/error.h"
#include "test_util.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::all_close;
using test::data_path;
using ::testing::HasSubstr;

// The naming table of the issue, written out independently of the library's.
const std::vector<std::pair<std::string, std::string>> kNames = {
    {"q_a_proj.weight", "wq_a.weight"},
    {"q_a_norm.weight", "q_norm.weight"},
    {"q_b_proj.weight", "wq_b.weight"},
    {"kv_proj.weight", "wkv.weight"},
    {"kv_norm.weight", "kv_norm.weight"},
    {"o_a_proj.weight", "wo_a.weight"},
    {"o_b_proj.weight", "wo_b.weight"},
    {"sinks", "attn_sink"},
    {"compressor.kv_proj.weight", "compressor.wkv.weight"},
    {"compressor.gate_proj.weight", "compressor.wgate.weight"},
    {"compressor.position_bias", "compressor.ape"},
    {"compressor.kv_norm.weight", "compressor.norm.weight"},
    {"compressor.indexer.kv_proj.weight", "indexer.compressor.wkv.weight"},
    {"compressor.indexer.gate_proj.weight", "indexer.compressor.wgate.weight"},
    {"compressor.indexer.position_bias", "indexer.compressor.ape"},
    {"compressor.indexer.kv_norm.weight", "indexer.compressor.norm.weight"},
    {"compressor.indexer.q_b_proj.weight", "indexer.wq_b.weight"},
    {"compressor.indexer.scorer.weights_proj.weight", "indexer.weights_proj.weight"},
};

bool is_hf(NamingScheme s) { return s == NamingScheme::hugging_face; }

std::string full_name(NamingScheme s, int64_t layer, const std::string& hf) {
  for (const auto& [h, ds] : kNames)
    if (h == hf)
      return is_hf(s) ? "model.layers." + std::to_string(layer) + ".self_attn." + h
                      : "layers." + std::to_string(layer) + ".attn." + ds;
  ADD_FAILURE() << "no name " << hf;
  return hf;
}

std::string scale_of(NamingScheme s, const std::string& weight) {
  return is_hf(s) ? weight + "_scale_inv" : weight.substr(0, weight.size() - 7) + ".scale";
}

// A fresh folder per call; all are removed when the test binary exits.
fs::path fresh_dir(const std::string& name) {
  static struct Cleanup {
    std::vector<fs::path> dirs;
    ~Cleanup() {
      std::error_code ec;
      for (const fs::path& d : dirs) fs::remove_all(d, ec), fs::remove(d.string() + ".log", ec);
    }
  } cleanup;
  static int n = 0;
  const fs::path d = fs::path(::testing::TempDir()) /
                     ("dsv4_model_" + std::to_string(::getpid()) + "_" + std::to_string(n++) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  cleanup.dirs.push_back(d);
  return d;
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

std::string config_text(const Config& c, NamingScheme s) {
  json j = {{"hidden_size", c.hidden_size},
            {"num_attention_heads", c.num_attention_heads},
            {"head_dim", c.head_dim},
            {"qk_rope_head_dim", c.qk_rope_head_dim},
            {"q_lora_rank", c.q_lora_rank},
            {"o_groups", c.o_groups},
            {"o_lora_rank", c.o_lora_rank},
            {"sliding_window", c.sliding_window},
            {"compress_rate_csa", c.compress_rate_csa},
            {"compress_rate_hca", c.compress_rate_hca},
            {"index_n_heads", c.index_n_heads},
            {"index_head_dim", c.index_head_dim},
            {"index_topk", c.index_topk},
            {"rope_theta", c.rope_theta},
            {"compress_rope_theta", c.compress_rope_theta},
            {"rms_norm_eps", c.rms_norm_eps},
            {"num_hidden_layers", c.layer_types.size()}};
  j["rope_scaling"] = {{"type", "yarn"},
                       {"factor", c.rope_scaling.factor},
                       {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings},
                       {"beta_fast", c.rope_scaling.beta_fast},
                       {"beta_slow", c.rope_scaling.beta_slow}};
  // HF configs list layer_types, DeepSeek ones compress_ratios: exercise both.
  for (LayerType t : c.layer_types) {
    if (is_hf(s))
      j["layer_types"].push_back(layer_type_name(t));
    else
      j["compress_ratios"].push_back(c.compress_rate(t));
  }
  return j.dump();
}

// Writes config.json and the shards: one shard -> model.safetensors (unless
// `index`), else model-0000k.safetensors + model.safetensors.index.json
// (a tensor stored twice is indexed at its first shard).
void write_folder(const fs::path& dir, const Config& c, NamingScheme s,
                  const std::vector<std::vector<NamedTensor>>& shards, bool index = false) {
  write_text(dir / "config.json", config_text(c, s));
  if (shards.size() == 1 && !index) return write_safetensors(dir / "model.safetensors", shards[0]);
  json wm = json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = "model-0000" + std::to_string(k + 1) + ".safetensors";
    write_safetensors(dir / file, shards[k]);
    for (const NamedTensor& t : shards[k])
      if (!wm.contains(t.name)) wm[t.name] = file;
  }
  write_text(dir / "model.safetensors.index.json", json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump());
}

const Tensor& slot(const LayerWeights& w, const std::string& name) {
  return test::weight_named(w, name);
}

// A layer's tensors under scheme s, stored as F32.
std::vector<NamedTensor> f32_tensors(const Config& c, LayerType t, const LayerWeights& w, NamingScheme s,
                                     int64_t layer) {
  std::vector<NamedTensor> out;
  for (const WeightSpec& e : weight_specs(c, t)) out.push_back(named(full_name(s, layer, e.name), slot(w, e.name)));
  return out;
}

Config three_layers() {
  Config c = test::small_config();
  c.layer_types = {LayerType::sliding, LayerType::csa, LayerType::hca};
  return c;
}

void expect_same_weights(const LayerWeights& got, const LayerWeights& want, const Config& c, LayerType t) {
  for (const WeightSpec& e : weight_specs(c, t)) {
    EXPECT_EQ(slot(got, e.name).shape, slot(want, e.name).shape) << e.name;
    EXPECT_TRUE(slot(got, e.name).data == slot(want, e.name).data) << e.name << " differs";
  }
}

// f must throw dsv4::Error whose message contains every phrase.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& phrases) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << phrases.front() << "'";
  } catch (const Error& e) {
    for (const std::string& p : phrases) EXPECT_THAT(e.what(), HasSubstr(p));
  }
}

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

// ---------------------------------------------------------------- conformance re-packed

// config.json from a conformance file's `config` metadata (+ its one layer type).
std::string config_from_case(const SafeTensors& f, NamingScheme s) {
  json j = json::parse(f.meta("config"));
  const LayerType t = parse_layer_type(j["layer_type"].get<std::string>());
  j.erase("layer_type");
  j["num_hidden_layers"] = 1;
  if (is_hf(s))
    j["layer_types"] = {layer_type_name(t)};
  else
    j["compress_ratios"] = {
        t == LayerType::sliding ? json(0) : j[t == LayerType::csa ? "compress_rate_csa" : "compress_rate_hca"]};
  return j.dump();
}

// Re-packs a conformance case's weights as a one-layer folder (DeepSeek
// names: each tensor in its own shard).
fs::path repack(const std::string& file, NamingScheme s) {
  const SafeTensors f = SafeTensors::open(file);
  const LayerSpec spec = layer_spec_from_json_text(f.meta("config"), file);
  const LayerWeights w = load_layer_weights(f, spec.config, spec.type);
  const fs::path dir = fresh_dir(fs::path(file).stem().string());
  std::vector<std::vector<NamedTensor>> shards;
  for (NamedTensor& t : f32_tensors(spec.config, spec.type, w, s, 0)) {
    if (is_hf(s) && !shards.empty())
      shards[0].push_back(std::move(t));
    else
      shards.push_back({std::move(t)});
  }
  write_folder(dir, spec.config, s, shards);
  write_text(dir / "config.json", config_from_case(f, s));
  return dir;
}

// Concatenates chunk{c}.<what> along the sequence axis.
Tensor all_chunks(const SafeTensors& f, const std::string& what) {
  std::vector<Tensor> parts;
  while (f.contains("chunk" + std::to_string(parts.size()) + "." + what))
    parts.push_back(f.f32("chunk" + std::to_string(parts.size()) + "." + what));
  const int64_t b = parts[0].dim(0), d = parts[0].dim(2);
  int64_t s = 0;
  for (const Tensor& p : parts) s += p.dim(1);
  Tensor out({b, s, d});
  int64_t at = 0;
  for (const Tensor& p : parts) {
    for (int64_t r = 0; r < b; ++r)
      std::copy_n(p.data.begin() + r * p.dim(1) * d, p.dim(1) * d, out.data.begin() + (r * s + at) * d);
    at += p.dim(1);
  }
  return out;
}

class ConformanceRepack : public ::testing::TestWithParam<std::string> {};

TEST_P(ConformanceRepack, ModelLayerGivesTheReferenceOutput) {
  const std::string file = data_path("conformance/" + GetParam() + ".safetensors");
  const SafeTensors f = SafeTensors::open(file);
  const Tensor x = all_chunks(f, "hidden_states"), ref = all_chunks(f, "output");
  const int64_t first_chunk = f.f32("chunk0.hidden_states").dim(1);
  for (NamingScheme s : {NamingScheme::hugging_face, NamingScheme::deepseek}) {
    const Model m = Model::open(repack(file, s));
    EXPECT_EQ(m.scheme(), s);
    const Layer layer = m.layer(0);
    // Chunked as the case was generated (a stateless case is one chunk).
    EXPECT_TRUE(all_close(run_layer(layer, x, first_chunk), ref, 1e-5, 1e-5));
    if (first_chunk == x.dim(1)) {
      EXPECT_TRUE(all_close(run_layer(layer, x), ref, 1e-5, 1e-5));
      EXPECT_TRUE(all_close(run_layer(layer, x, 5), ref, 1e-5, 1e-5));  // chunked: same result
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, ConformanceRepack,
                         ::testing::Values("small_swa_stateless_s37", "small_csa_stateless_s37_b2",
                                           "small_hca_stateless_s37", "small_csa_cached_blocks4x4",
                                           "small_hca_cached_blocks4x4", "medium_csa_stateless_s100"),
                         [](const auto& info) { return info.param; });

TEST(Model, RunLayerChunkedMatchesOneShot) {
  const Config c = three_layers();
  std::mt19937 rng(2);
  for (LayerType t : c.layer_types) {
    const Layer layer(c, t, test::random_weights(c, t, rng));
    const Tensor x = test::random_tensor({2, 29, c.hidden_size}, rng);
    const Tensor one = run_layer(layer, x);
    for (int64_t chunk : {1, 3, 8, 29, 100}) EXPECT_TRUE(all_close(run_layer(layer, x, chunk), one, 1e-5, 1e-5));
  }
  const Layer layer(c, LayerType::sliding, test::random_weights(c, LayerType::sliding, rng));
  expect_error([&] { run_layer(layer, Tensor({2, 3})); }, {"input must be [B, S, 64]", "[2, 3]"});
}

// ---------------------------------------------------------------- the dsv4 binary

using test::dsv4_binary;
using test::sh;
using test::slurp;

TEST(ModelCli, SynthInfoRunReproduceTheConformanceOutput) {
  const fs::path bin = dsv4_binary();
  ASSERT_TRUE(!bin.empty() && fs::exists(bin)) << "dsv4 binary not found at " << bin << " (it is built with the tests)";
  const std::string file = data_path("conformance/small_csa_stateless_s37_b2.safetensors");
  const Tensor ref = SafeTensors::open(file).f32("chunk0.output");
  for (const char* scheme : {"hf", "original"}) {
    const fs::path dir = fresh_dir(std::string("cli_") + scheme), log = dir.string() + ".log";
    const std::string b = "'" + bin.string() + "' ";
    ASSERT_EQ(
        sh(b + "synth-model '" + dir.string() + "' --scheme " + scheme + " --sharded --from-conformance '" + file + "'",
           log),
        0)
        << slurp(log);
    ASSERT_EQ(sh(b + "info '" + dir.string() + "'", log), 0) << slurp(log);
    EXPECT_THAT(slurp(log), HasSubstr(std::string("naming  ") + (scheme[0] == 'h' ? "hugging_face" : "deepseek")));
    for (const char* chunk : {"", " --chunk 7 --threads 1"}) {
      const fs::path out = dir / "out.safetensors";
      ASSERT_EQ(sh(b + "run --model '" + dir.string() + "' --layer 0 --input '" +
                       (dir / "sample_input.safetensors").string() + "' --output '" + out.string() + "'" + chunk,
                   log),
                0)
          << slurp(log);
      EXPECT_TRUE(all_close(SafeTensors::open(out).f32("output"), ref, 1e-5, 1e-5)) << scheme << chunk;
    }
    EXPECT_NE(sh(b + "run --model '" + dir.string() + "' --layer 1 --input '" + file + "' --output /dev/null", log), 0);
    EXPECT_THAT(slurp(log), HasSubstr("layer 1 out of range"));
  }
}

TEST(ModelCli, SynthModelEveryDtypeLoadsAndRuns) {
  const fs::path bin = dsv4_binary();
  ASSERT_TRUE(!bin.empty() && fs::exists(bin)) << "dsv4 binary not found at " << bin << " (it is built with the tests)";
  for (const char* dtype : {"f32", "bf16", "fp8"}) {
    const fs::path dir = fresh_dir(std::string("synth_") + dtype), log = dir.string() + ".log";
    ASSERT_EQ(sh("'" + bin.string() + "' synth-model '" + dir.string() + "' --dtype " + dtype + " --seed 4", log), 0)
        << slurp(log);
    const Model m = Model::open(dir);
    const Tensor x = SafeTensors::open(dir / "sample_input.safetensors").f32("hidden_states");
    for (int64_t i = 0; i < m.num_layers(); ++i) {
      EXPECT_TRUE(m.layer_problems(i).empty()) << dtype << " layer " << i;
      const Layer layer = m.layer(i);
      const Tensor one = run_layer(layer, x);
      EXPECT_TRUE(all_close(run_layer(layer, x, 6), one, 1e-5, 1e-5)) << dtype << " layer " << i;
    }
    EXPECT_EQ(m.layer_type(1), LayerType::csa);
  }
}

// ---------------------------------------------------------------- bad folders and indexes

// A valid 3-layer single-file folder in scheme s; returns its tensors too.
fs::path good_folder(NamingScheme s, std::vector<NamedTensor>* tensors = nullptr, bool sharded = false) {
  const Config c = three_layers();
  std::mt19937 rng(1);
  std::vector<std::vector<NamedTensor>> shards(sharded ? 3 : 1);
  for (int64_t i = 0; i < 3; ++i)
    for (NamedTensor& t :
         f32_tensors(c, c.layer_types[size_t(i)], test::random_weights(c, c.layer_types[size_t(i)], rng), s, i))
      shards[sharded ? size_t(i) : 0].push_back(std::move(t));
  const fs::path dir = fresh_dir("good");
  write_folder(dir, c, s, shards);
  if (tensors)
    for (auto& sh : shards)
      for (auto& t : sh) tensors->push_back(t);
  return dir;
}

TEST(ModelErrors, Folder) {
  const fs::path none = fresh_dir("none");
  expect_error([&] { Model::open(none / "nope"); }, {"nope", "not a directory"});
  expect_error([&] { Model::open(none); }, {"config.json"});
  const fs::path dir = good_folder(NamingScheme::hugging_face);
  fs::remove(dir / "model.safetensors");
  expect_error([&] { Model::open(dir); }, {dir.string(), "neither model.safetensors.index.json nor model.safetensors"});

  Config c = three_layers();
  c.layer_types.clear();
  const fs::path d2 = good_folder(NamingScheme::hugging_face);
  write_text(d2 / "config.json", config_text(c, NamingScheme::hugging_face));
  expect_error([&] { Model::open(d2); }, {(d2 / "config.json").string(), "no per-layer types"});
  write_text(d2 / "config.json", "{\"hidden_size\": ");
  expect_error([&] { Model::open(d2); }, {(d2 / "config.json").string(), "invalid JSON"});

  const fs::path d3 = good_folder(NamingScheme::hugging_face);
  expect_error([&] { Model::open(d3).layer_type(3); }, {"layer 3 out of range", "3 layers"});
  expect_error([&] { Model::open(d3).load_layer(-1); }, {"layer -1 out of range"});
}

TEST(ModelErrors, SchemeDetection) {
  const Config c = three_layers();
  const fs::path dir = fresh_dir("scheme");
  write_folder(dir, c, NamingScheme::hugging_face,
               {{named("model.layers.0.self_attn.sinks", Tensor({4})), named("layers.0.attn.attn_sink", Tensor({4}))}});
  expect_error([&] { Model::open(dir); }, {dir.string(), "mixes naming schemes", "'layers.0.attn.attn_sink'"});
  write_folder(dir, c, NamingScheme::hugging_face, {{named("embed.weight", Tensor({4}))}});
  expect_error([&] { Model::open(dir); }, {dir.string(), "no layer tensors"});
}

TEST(ModelErrors, MalformedIndex) {
  const fs::path dir = good_folder(NamingScheme::deepseek, nullptr, true);
  const fs::path index = dir / "model.safetensors.index.json";
  const std::string idx = index.string();
  const std::string good = slurp(index);
  const auto with_index = [&](const std::string& text, const std::vector<std::string>& phrases) {
    write_text(index, text);
    expect_error([&] { Model::open(dir); }, phrases);
  };
  with_index("{\"weight_map\": {", {idx, "bad JSON"});
  with_index("[]", {idx, "must be a JSON object"});
  with_index("{\"metadata\": {}}", {idx, "no 'weight_map'"});
  with_index("{\"weight_map\": []}", {idx, "'weight_map' must be an object"});
  with_index("{\"weight_map\": {}}", {idx, "'weight_map' is empty"});
  with_index(R"({"weight_map": {"layers.0.attn.attn_sink": 3}})",
             {idx, "tensor 'layers.0.attn.attn_sink'", "file name string"});
  with_index(R"({"weight_map": {"layers.0.attn.attn_sink": "../model-00001.safetensors"}})",
             {idx, "tensor 'layers.0.attn.attn_sink'", "not a plain file name"});
  with_index(R"({"weight_map": {"layers.0.attn.attn_sink": "model-00001.safetensors",)"
             R"( "layers.0.attn.attn_sink": "model-00002.safetensors"}})",
             {idx, "tensor 'layers.0.attn.attn_sink' is listed twice"});
  with_index(R"({"weight_map": {"layers.0.attn.attn_sink": "model-00009.safetensors"}})",
             {idx, "shard 'model-00009.safetensors'", "tensor 'layers.0.attn.attn_sink'", "not found"});
  with_index(R"({"weight_map": {"layers.1.attn.attn_sink": "model-00001.safetensors"}})",
             {idx, "tensor 'layers.1.attn.attn_sink'", (dir / "model-00001.safetensors").string(), "no such tensor"});

  write_text(index, good);
  EXPECT_NO_THROW(Model::open(dir).load_layer(2));
  // A truncated shard: the error names the shard.
  const fs::path shard = dir / "model-00002.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 10);
  expect_error([&] { Model::open(dir); }, {shard.string(), "past the end"});
  fs::resize_file(shard, 4);
  expect_error([&] { Model::open(dir); }, {shard.string(), "too short"});
}

TEST(ModelErrors, IndexParser) {
  EXPECT_EQ(
      parse_safetensors_index(R"({"metadata": {"total_size": 1}, "weight_map": {"a": "x.safetensors"}})", "i.json"),
      (std::map<std::string, std::string>{{"a", "x.safetensors"}}));
  // Keys repeated elsewhere (not under weight_map) are no duplicates.
  EXPECT_NO_THROW(parse_safetensors_index(
      R"({"metadata": {"a": 1}, "weight_map": {"a": "x", "b": "x"}, "x": {"a": 1}})", "i.json"));
  expect_error([] { parse_safetensors_index(R"({"weight_map": {"a": "x", "b": "x", "a": "y"}})", "i.json"); },
               {"i.json", "tensor 'a' is listed twice"});
  expect_error([] { parse_safetensors_index(R"({"weight_map": {"a": ""}})", "i.json"); },
               {"i.json", "not a plain file name"});
}

// Removes, adds or changes one tensor of the good 3-layer folder.
fs::path edited(NamingScheme s, const std::function<void(std::vector<NamedTensor>&)>& edit) {
  std::vector<NamedTensor> ts;
  const fs::path dir = good_folder(s, &ts);
  edit(ts);
  write_safetensors(dir / "model.safetensors", ts);
  return dir;
}

void erase_tensor(std::vector<NamedTensor>& ts, const std::string& name) {
  std::erase_if(ts, [&](const NamedTensor& t) { return t.name == name; });
}

NamedTensor& find_tensor(std::vector<NamedTensor>& ts, const std::string& name) {
  for (NamedTensor& t : ts)
    if (t.name == name) return t;
  throw std::runtime_error("test: no tensor " + name);
}

TEST(ModelErrors, MissingUnexpectedDuplicate) {
  for (NamingScheme s : {NamingScheme::hugging_face, NamingScheme::deepseek}) {
    const std::string missing = full_name(s, 1, "compressor.indexer.q_b_proj.weight");
    const fs::path d1 = edited(s, [&](auto& ts) { erase_tensor(ts, missing); });
    expect_error(
        [&] { Model::open(d1).load_layer(1); },
        {d1.string(), "layer 1 (compressed_sparse_attention) cannot be loaded", "tensor '" + missing + "': missing"});
    EXPECT_NO_THROW(Model::open(d1).load_layer(2));  // other layers are fine

    // An unknown name, and a compressor tensor in a sliding layer.
    const std::string odd = (is_hf(s) ? "model.layers.0.self_attn." : "layers.0.attn.") + std::string("foo.weight");
    const std::string extra = full_name(s, 0, "compressor.kv_proj.weight");
    const fs::path d2 = edited(s, [&](auto& ts) {
      ts.push_back(named(odd, Tensor({2})));
      ts.push_back(named(extra, Tensor({64, 64})));
    });
    const auto problems = Model::open(d2).layer_problems(0);
    ASSERT_EQ(problems.size(), 2u);
    EXPECT_THAT(problems[0],
                HasSubstr("tensor '" + extra + "': unexpected (not a tensor of a sliding_attention layer)"));
    EXPECT_THAT(problems[1], HasSubstr("tensor '" + odd + "': unexpected"));
    EXPECT_THAT(problems[1], HasSubstr((d2 / "model.safetensors").string()));
    expect_error([&] { Model::open(d2).load_layer(0); }, {odd, extra});
    EXPECT_EQ(Model::open(d2).layer_tensors(0).size(), weight_specs(three_layers(), LayerType::sliding).size() + 2);
  }
  // The same tensor in two shards.
  const fs::path d3 = good_folder(NamingScheme::hugging_face, nullptr, true);
  const std::string dup = "model.layers.1.self_attn.sinks";
  write_safetensors(d3 / "model-00003.safetensors", [&] {
    std::vector<NamedTensor> ts;
    const SafeTensors f = SafeTensors::open(d3 / "model-00003.safetensors");
    for (const std::string& n : f.names()) ts.push_back(named(n, f.f32(n)));
    ts.push_back(named(dup, Tensor({4})));
    return ts;
  }());
  const auto dup_problems = Model::open(d3).layer_problems(1);
  ASSERT_EQ(dup_problems.size(), 1u) << dup_problems.back();  // not also "missing"
  expect_error([&] { Model::open(d3).load_layer(1); },
               {"tensor '" + dup + "': duplicated", (d3 / "model-00002.safetensors").string(),
                (d3 / "model-00003.safetensors").string()});
}

TEST(ModelErrors, ShapesDtypesScalesAndNonFinite) {
  const NamingScheme s = NamingScheme::deepseek;
  // HCA compressor.kv_proj must be [D, d]; the CSA shape [2D, d] is wrong here.
  const std::string kv = full_name(s, 2, "compressor.kv_proj.weight");
  const fs::path d1 = edited(s, [&](auto& ts) { find_tensor(ts, kv) = named(kv, Tensor({64, 64})); });
  expect_error([&] { Model::open(d1).load_layer(2); },
               {"model.safetensors", "tensor '" + kv + "': shape [64, 64], expected [32, 64]"});

  const std::string sink = full_name(s, 0, "sinks");
  const fs::path d2 = edited(s, [&](auto& ts) { find_tensor(ts, sink) = named(sink, TensorI64{{4}, {1, 2, 3, 4}}); });
  expect_error([&] { Model::open(d2).load_layer(0); }, {"tensor '" + sink + "': dtype I64 is not a weight dtype"});

  const std::string wq = full_name(s, 0, "q_a_proj.weight");  // [32, 64]
  const auto fp8 = [&](std::vector<NamedTensor>& ts) {
    find_tensor(ts, wq) = {wq, DType::F8_E4M3, {32, 64}, std::vector<std::byte>(32 * 64, std::byte{0x38})};
  };
  const fs::path d3 = edited(s, fp8);
  expect_error([&] { Model::open(d3).load_layer(0); },
               {"tensor '" + wq + "': F8_E4M3 weight without its scale tensor 'layers.0.attn.wq_a.scale'"});
  const fs::path d4 = edited(s, [&](auto& ts) {
    fp8(ts);
    ts.push_back(named(scale_of(s, wq), Tensor({2, 1})));
  });
  expect_error([&] { Model::open(d4).load_layer(0); },
               {"tensor 'layers.0.attn.wq_a.scale': scale grid [2, 1], expected [1, 1]"});
  const fs::path d5 = edited(s, [&](auto& ts) { ts.push_back(named(scale_of(s, wq), Tensor({1, 1}))); });
  expect_error([&] { Model::open(d5).load_layer(0); }, {"'layers.0.attn.wq_a.scale': scale given for a F32 weight"});
  const fs::path d5b = edited(s, [&](auto& ts) {
    fp8(ts);
    ts.push_back(named(scale_of(s, wq), TensorI64{{1, 1}, {1}}));
  });
  expect_error([&] { Model::open(d5b).load_layer(0); }, {"scale dtype I64 is not a float dtype"});

  // Non-finite values: named with their count; FP8 NaN codes too.
  const std::string qn = full_name(s, 0, "q_a_norm.weight");
  const fs::path d6 = edited(s, [&](auto& ts) {
    Tensor t({32}, std::vector<float>(32, 1.0f));
    t.data[3] = NAN, t.data[9] = INFINITY;
    find_tensor(ts, qn) = named(qn, t);
  });
  expect_error([&] { Model::open(d6).load_layer(0); },
               {"model.safetensors", "tensor '" + qn + "': 2 of 32 values are not finite"});
  const fs::path d7 = edited(s, [&](auto& ts) {
    fp8(ts);
    find_tensor(ts, wq).bytes[5] = std::byte{0xff};
    ts.push_back(named(scale_of(s, wq), Tensor({1, 1}, {0.5f})));
  });
  expect_error([&] { Model::open(d7).load_layer(0); },
               {"tensor '" + wq + "': 1 of 2048 values are not finite after scaling"});
  // A clean FP8 weight with its scale loads: 0x38 = 1.0, times 0.5.
  const fs::path d8 = edited(s, [&](auto& ts) {
    fp8(ts);
    ts.push_back(named(scale_of(s, wq), Tensor({1, 1}, {0.5f})));
  });
  const LayerWeights w = Model::open(d8).load_layer(0);
  EXPECT_EQ(w.q_a_proj.data, std::vector<float>(32 * 64, 0.5f));
}

}  // namespace
}  // namespace dsv4
