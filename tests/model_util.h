// Shared by the model tests: model folders written here (both naming
// schemes, sharded or not), with names from an independent copy of the table.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "dsv4/model.h"
#include "test_util.h"

namespace dsv4::model_test {

namespace fs = std::filesystem;

// The naming table of the issue, written out independently of the library's.
extern const std::vector<std::pair<std::string, std::string>> kNames;

bool is_hf(NamingScheme s);
std::string full_name(NamingScheme s, int64_t layer, const std::string& hf);
std::string scale_of(NamingScheme s, const std::string& weight);
// A fresh folder per call; all are removed when the test binary exits.
fs::path fresh_dir(const std::string& name);
void write_text(const fs::path& p, const std::string& s);
std::string config_text(const Config& c, NamingScheme s);
// Writes config.json and the shards: one shard -> model.safetensors (unless
// `index`), else model-0000k.safetensors + model.safetensors.index.json
// (a tensor stored twice is indexed at its first shard).
void write_folder(const fs::path& dir, const Config& c, NamingScheme s,
                  const std::vector<std::vector<NamedTensor>>& shards, bool index = false);
const Tensor& slot(const LayerWeights& w, const std::string& name);
// A layer's tensors under scheme s, stored as F32.
std::vector<NamedTensor> f32_tensors(const Config& c, LayerType t, const LayerWeights& w, NamingScheme s,
                                     int64_t layer);
Config three_layers();
void expect_same_weights(const LayerWeights& got, const LayerWeights& want, const Config& c, LayerType t);
// f must throw dsv4::Error whose message contains every phrase.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& phrases);
// A valid 3-layer single-file folder in scheme s; returns its tensors too.
fs::path good_folder(NamingScheme s, std::vector<NamedTensor>* tensors = nullptr, bool sharded = false);

}  // namespace dsv4::model_test
