// The comparator can fail: conformance files with one value nudged past the
// tolerance, one top-k index changed, or a tensor or chunk missing are
// rejected by verify_case with a message naming what broke, and `dsv4 verify`
// exits non-zero on them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include "dsv4/conformance.h"
#include "dsv4/safetensors.h"
#include "test_util.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Tensors = std::vector<NamedTensor>;

using Metadata = std::map<std::string, std::string>;

// Copy of a shipped conformance file with `edit` applied to its tensors (and `meta` to its metadata).
fs::path tampered(const std::string& file, const std::string& tag, const std::function<void(Tensors&)>& edit,
                  const std::function<void(Metadata&)>& meta = nullptr) {
  const SafeTensors f = SafeTensors::open(test::data_path("conformance/" + file));
  Tensors ts;
  for (const std::string& n : f.names()) {
    const auto b = f.bytes(n);
    ts.push_back({n, f.info(n).dtype, f.info(n).shape, {b.begin(), b.end()}});
  }
  edit(ts);
  Metadata md = f.metadata();
  if (meta) meta(md);
  const fs::path out =
      fs::path(::testing::TempDir()) / ("dsv4_verify_" + tag + "_" + std::to_string(::getpid()) + ".safetensors");
  write_safetensors(out, ts, md);
  return out;
}

NamedTensor& find(Tensors& ts, const std::string& name) {
  auto it = std::find_if(ts.begin(), ts.end(), [&](const NamedTensor& t) { return t.name == name; });
  if (it == ts.end()) throw std::runtime_error("test file has no tensor " + name);
  return *it;
}

std::string failures(const CaseReport& r) {
  std::string s;
  for (const std::string& f : r.failures) s += f + "\n";
  return s;
}

// The smallest |value| of an F32 tensor gets +2e-5: twice the 1e-5 + 1e-5·|ref| bound there.
void nudge(NamedTensor& t) {
  std::vector<float> v(t.bytes.size() / sizeof(float));
  std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
  const auto at = std::min_element(v.begin(), v.end(), [](float a, float b) { return std::fabs(a) < std::fabs(b); });
  *at += 2e-5f;
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
}

const char* kCsa = "small_csa_stateless_s37.safetensors";

TEST(Verify, ShippedFilePasses) {  // the control for the tests below
  const CaseReport r = verify_case(test::data_path(std::string("conformance/") + kCsa));
  EXPECT_TRUE(r.passed) << failures(r);
}

TEST(Verify, OneValueNudgedBy2e5FailsNamingTheTensor) {
  for (const char* t : {"output", "q", "kv", "compressed_kv", "indexer_q", "indexer_kv", "index_scores"}) {
    const fs::path p = tampered(kCsa, t, [&](Tensors& ts) { nudge(find(ts, std::string("chunk0.") + t)); });
    const CaseReport r = verify_case(p);
    EXPECT_FALSE(r.passed) << t;
    EXPECT_THAT(failures(r), HasSubstr(std::string("chunk0.[0]") + t + ": 1 of ")) << t;
  }
  // A later chunk of a cached case too.
  const fs::path p = tampered("small_hca_cached_blocks4x4.safetensors", "chunk3",
                              [](Tensors& ts) { nudge(find(ts, "chunk3.output")); });
  EXPECT_THAT(failures(verify_case(p)), HasSubstr("chunk3.[0]output: 1 of "));
}

// Query `row` of chunk0.topk_indices [1, S, k] with one selected entry replaced by one it did not select.
TEST(Verify, OneChangedTopkIndexFailsNamingTheQuery) {
  const SafeTensors f = SafeTensors::open(test::data_path(std::string("conformance/") + kCsa));
  const TensorI64 ref = f.i64("chunk0.topk_indices");
  const int64_t s = ref.shape.at(1), k = ref.shape.at(2), row = s - 1;  // the last query sees every entry
  const std::set<int64_t> chosen = topk_set(ref, row);
  ASSERT_EQ(static_cast<int64_t>(chosen.size()), k);
  int64_t other = 0;
  while (chosen.count(other)) ++other;
  ASSERT_LT(other, f.f32("chunk0.index_scores").shape.back());  // an eligible entry the reference did not pick
  auto edit = [&](bool swap_only) {
    return [=](Tensors& ts) {
      int64_t* v = reinterpret_cast<int64_t*>(find(ts, "chunk0.topk_indices").bytes.data()) + row * k;
      if (swap_only)
        std::swap(v[0], v[k - 1]);  // same set, other order: still passes
      else
        v[k - 1] = other;
    };
  };
  EXPECT_TRUE(verify_case(tampered(kCsa, "topk_order", edit(true))).passed);
  const CaseReport r = verify_case(tampered(kCsa, "topk", edit(false)));
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(failures(r), HasSubstr("chunk0.[0]topk_indices: query " + std::to_string(row) + " selects"));
}

TEST(Verify, MissingTensorFailsNamingIt) {
  for (const char* t :
       {"chunk0.output", "chunk0.q", "chunk0.kv", "chunk0.compressed_kv", "chunk0.indexer_q", "chunk0.indexer_kv",
        "chunk0.index_scores", "chunk0.topk_indices", "chunk0.position_ids", "chunk0.hidden_states"}) {
    const fs::path p =
        tampered(kCsa, "missing", [&](Tensors& ts) { std::erase_if(ts, [&](auto& x) { return x.name == t; }); });
    const CaseReport r = verify_case(p);
    EXPECT_FALSE(r.passed) << t;
    EXPECT_THAT(failures(r), HasSubstr(std::string("'") + t + "'"));
  }
}

// A cached file that lost a chunk (its last one, or a middle one's input) must
// not pass on the chunks that are left.
TEST(Verify, MissingChunkFails) {
  const std::string file = "small_csa_cached_decode40.safetensors";
  auto drop = [](const std::string& prefix) {
    return [=](Tensors& ts) { std::erase_if(ts, [&](auto& x) { return x.name.rfind(prefix, 0) == 0; }); };
  };
  CaseReport r = verify_case(tampered(file, "last_chunk", drop("chunk39.")));
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(failures(r), HasSubstr("'chunk39.hidden_states'"));
  r = verify_case(tampered(file, "middle_input", drop("chunk7.hidden_states")));
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(failures(r), HasSubstr("'chunk7.hidden_states'"));
}

// A misspelled key in the `config` metadata would run with that key's default
// (here rms_norm_eps 1e-6, the value the file was made with): refused, naming it.
TEST(Verify, MisspelledConfigKeyFails) {
  auto respell = [](const std::string& from, const std::string& to) {
    return [=](Metadata& md) {
      std::string& c = md.at("config");
      const size_t at = c.find("\"" + from + "\"");
      ASSERT_NE(at, std::string::npos) << from;
      c.replace(at + 1, from.size(), to);
    };
  };
  const auto none = [](Tensors&) {};
  CaseReport r = verify_case(tampered(kCsa, "typo", none, respell("rms_norm_eps", "rms_:orm_eps")));
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(failures(r), HasSubstr("unknown key 'rms_:orm_eps': did you mean 'rms_norm_eps'?"));
  r = verify_case(tampered(kCsa, "nested_typo", none, respell("beta_slow", "beta_slwo")));
  EXPECT_THAT(failures(r), HasSubstr("unknown key 'rope_scaling.beta_slwo': did you mean 'rope_scaling.beta_slow'?"));
  r = verify_case(tampered(kCsa, "unknown", none, respell("rms_norm_eps", "norm_epsilon")));
  EXPECT_THAT(failures(r), HasSubstr("unknown key 'norm_epsilon' (this config takes: compress_rate_csa, "));
}

// window_key_positions: one position changed, or the chunk's window one key short.
TEST(Verify, WindowKeyPositionsAreChecked) {
  const std::string file = "small_swa_cached_decode40.safetensors";  // W = 8: chunk 20 attends positions 13..20
  auto edit = [](bool shorten) {
    return [=](Tensors& ts) {
      NamedTensor& t = find(ts, "chunk20.window_key_positions");
      if (shorten) {
        t.bytes.erase(t.bytes.begin(), t.bytes.begin() + 8), t.shape[0] -= 1;
      } else {
        reinterpret_cast<int64_t*>(t.bytes.data())[2] += 1;
      }
    };
  };
  CaseReport r = verify_case(tampered(file, "window_pos", edit(false)));
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(failures(r), HasSubstr("chunk20.window_key_positions: reference has [8] from 13 to 20, ours positions "
                                     "13 to 20 (8 keys)"));
  r = verify_case(tampered(file, "window_short", edit(true)));
  EXPECT_THAT(failures(r), HasSubstr("chunk20.window_key_positions: reference has [7] from 14 to 20"));
  r = verify_case(tampered(file, "window_missing", [](Tensors& ts) {
    std::erase_if(ts, [](auto& x) { return x.name == "chunk3.window_key_positions"; });
  }));
  EXPECT_THAT(failures(r), HasSubstr("'chunk3.window_key_positions'"));
}

TEST(Verify, StoredRopeFrequenciesAreChecked) {
  for (const char* name : {"rope.main_inv_freq", "rope.compress_inv_freq"}) {
    const CaseReport r = verify_case(tampered(kCsa, "rope", [&](Tensors& ts) {
      float* f = reinterpret_cast<float*>(find(ts, name).bytes.data());
      f[1] *= 1.00001f;  // 1e-5 relative: far above fp32 rounding, far below the outputs' tolerance
    }));
    EXPECT_FALSE(r.passed) << name;
    EXPECT_THAT(failures(r), HasSubstr(std::string(name) + ": 1 of ")) << name;
  }
}

TEST(Verify, CliExitsNonZeroOnATamperedFile) {
  const fs::path bin = test::dsv4_binary();
  ASSERT_TRUE(!bin.empty() && fs::exists(bin)) << "dsv4 binary not found at " << bin;
  const fs::path good = test::data_path(std::string("conformance/") + kCsa);
  const fs::path bad = tampered(kCsa, "cli", [](Tensors& ts) { nudge(find(ts, "chunk0.output")); });
  const fs::path log = fs::path(::testing::TempDir()) / ("dsv4_verify_cli_" + std::to_string(::getpid()) + ".log");
  std::string cmd;  // built with += : chains of + trip GCC 12's false -Wrestrict here
  for (const fs::path& p : {bin, fs::path("verify"), good}) cmd += " '" + p.string() + "'";
  EXPECT_EQ(test::sh(cmd, log), 0) << test::slurp(log);
  cmd += " '" + bad.string() + "'";
  EXPECT_NE(test::sh(cmd, log), 0);
  EXPECT_THAT(test::slurp(log), HasSubstr("chunk0.[0]output: 1 of "));
  EXPECT_THAT(test::slurp(log), HasSubstr("1 passed, 1 failed"));
}

}  // namespace
}  // namespace dsv4
