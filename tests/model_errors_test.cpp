// Bad model folders, indexes, shards and tensors give errors naming the file
// and the tensor.
#include "dsv4/model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
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
using test::slurp;
using ::testing::HasSubstr;

// ---------------------------------------------------------------- bad folders and indexes

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
