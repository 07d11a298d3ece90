// Conformance cases re-packed as model folders reproduce their outputs,
// through Model + Layer + run_layer and through the dsv4 binary
// (synth-model, info, run).
#include "dsv4/model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

// 'p' for a shell command line (built by appending: GCC 12 warns falsely on
// some "literal" + std::string chains, -Wrestrict).
std::string quoted(const fs::path& p) {
  std::string q = "'";
  q += p.string();
  q += "' ";
  return q;
}

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
    const std::string b = quoted(bin);
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
    ASSERT_EQ(sh(quoted(bin) + "synth-model '" + dir.string() + "' --dtype " + dtype + " --seed 4", log), 0)
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

}  // namespace
}  // namespace dsv4
