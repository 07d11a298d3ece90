// Shared by the decode-state tests: random configs, chunkings, feeding a
// layer chunk by chunk.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "dsv4/conformance.h"
#include "dsv4/layer.h"
#include "dsv4/state.h"
#include "test_util.h"

namespace dsv4::state_test {

inline const LayerType kTypes[] = {LayerType::sliding, LayerType::csa, LayerType::hca};

// A random config a layer in numerics n accepts (deployment: D_I a power of two).
inline Config random_config(std::mt19937& rng, Numerics n) {
  Config c = test::random_config(rng);
  if (n == Numerics::deployment) c.index_head_dim = std::max<int64_t>(c.qk_rope_head_dim, int64_t{8} << (rng() % 2));
  return c;
}
inline LayerOptions with(Numerics n) { return LayerOptions{WeightFormat::f32, n}; }

// Rows [from, from + n) of x [S, d] as [n, d].
inline Tensor rows(const Tensor& x, int64_t from, int64_t n) {
  const int64_t d = x.dim(1);
  return Tensor({n, d}, std::vector<float>(x.data.begin() + from * d, x.data.begin() + (from + n) * d));
}

inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape == b.shape && (a.empty() || std::memcmp(a.ptr(), b.ptr(), a.data.size() * sizeof(float)) == 0);
}

// Output of feeding x [S, d] through `st` in `chunks`, and (if asked) each row's top-k set.
struct Fed {
  Tensor y;
  std::vector<std::set<int64_t>> topk;
};
inline Fed feed(const Layer& layer, const Tensor& x, const std::vector<int64_t>& chunks, LayerState& st,
                bool debug = false) {
  const int64_t d = x.dim(1);
  Fed f{Tensor({x.dim(0), d}), {}};
  int64_t at = 0;
  for (int64_t n : chunks) {
    Intermediates dbg;
    const Tensor y = layer.forward(rows(x, at, n), st, debug ? &dbg : nullptr);
    std::copy(y.data.begin(), y.data.end(), f.y.data.begin() + at * d);
    for (int64_t t = 0; debug && t < n; ++t) f.topk.push_back(topk_set(dbg.topk, t));
    at += n;
  }
  EXPECT_EQ(at, x.dim(0));
  return f;
}

// One-shot forward of x [S, d] with its intermediates.
inline Tensor one_shot(const Layer& layer, const Tensor& x, Intermediates& dbg) {
  std::vector<Intermediates> all;
  Tensor y = layer.forward(Tensor({1, x.dim(0), x.dim(1)}, x.data), &all);
  dbg = std::move(all.at(0));
  y.shape = {x.dim(0), x.dim(1)};
  return y;
}

inline std::vector<int64_t> chunks_at(std::vector<int64_t> cuts, int64_t s) {  // boundaries in (0, s) -> lengths
  std::erase_if(cuts, [s](int64_t at) { return at <= 0 || at >= s; });
  cuts.push_back(s);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<int64_t> out;
  for (size_t i = 0; i < cuts.size(); ++i) out.push_back(cuts[i] - (i ? cuts[i - 1] : 0));
  return out;
}
inline std::vector<int64_t> chunks_of(int64_t len, int64_t s) {
  std::vector<int64_t> out;
  for (int64_t at = 0; at < s; at += len) out.push_back(std::min(len, s - at));
  return out;
}
inline std::vector<int64_t> random_chunks(std::mt19937& rng, int64_t s, int64_t max_len) {
  std::vector<int64_t> out;
  for (int64_t at = 0; at < s;) {
    const int64_t n = std::min<int64_t>(s - at, rng() % (max_len + 1));  // 0 = an empty chunk, a no-op
    out.push_back(n);
    at += n;
  }
  return out;
}

// A fresh folder of this process (other builds may run the same tests at once).
inline std::filesystem::path scratch_dir(const std::string& name) {
  const auto dir =
      std::filesystem::path(::testing::TempDir()) / ("dsv4_state_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::string show(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t n : v) s += (s.empty() ? "" : ",") + std::to_string(n);
  return s;
}

}  // namespace dsv4::state_test
