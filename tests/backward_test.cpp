// The backward pass: the naive reference::backward against central finite
// differences of its own double-precision loss (tiny layers, every tensor,
// every element).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>

#include "dsv4/layer.h"
#include "dsv4/safetensors.h"
#include "io/weight_table.h"
#include "reference.h"
#include "test_util.h"

namespace dsv4 {
namespace {

const LayerType kTypes[] = {LayerType::sliding, LayerType::csa, LayerType::hca};

// Hidden 16, 2 heads of 8 (4 with RoPE), window 3, CSA rate 2 with top-2, HCA rate 3.
Config tiny_config() {
  Config c = test::small_config();
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.q_lora_rank = 8;
  c.o_groups = 2;
  c.o_lora_rank = 4;
  c.sliding_window = 3;
  c.compress_rate_csa = 2;
  c.compress_rate_hca = 3;
  c.index_n_heads = 2;
  c.index_head_dim = 4;
  c.index_topk = 2;
  return c;
}

bool is_indexer(const std::string& name) { return name.rfind("compressor.indexer.", 0) == 0; }

// The gradient tensor of `name` ("dx" or a spec weight name).
const Tensor& grad_of(const LayerGradients& g, const std::string& name) {
  if (name == "dx") return g.dx;
  const Tensor* t = weight_slot(const_cast<LayerWeights&>(g.weights), name);  // read only
  static const Tensor none;
  return t ? *t : none;
}

// "dx", then every weight of the layer type.
std::vector<WeightSpec> gradient_specs(const Config& c, LayerType t, const Shape& x_shape) {
  std::vector<WeightSpec> s = {{"dx", x_shape}};
  for (const WeightSpec& w : expected_weights(c, t)) s.push_back(w);
  return s;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (float v : t.data) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

// ---------------------------------------------------------------------------
// reference::backward == central differences of reference::loss_f64.
//
// The selection is held fixed by construction: loss_f64 takes the top-k of
// the unperturbed input (select_topk) as an argument and never runs the
// indexer, exactly as backward does, so a step cannot move an entry in or
// out of a query's set. Every element of every tensor is stepped (the layers
// are tiny). Tolerance: |fd − g| ≤ 1e-6 · max|g| of the tensor. With step
// h = 1e-6 in double the difference quotient's truncation error is
// h²/6·|L'''| ≈ 1e-13 and its cancellation error ≈ 1e-16·|L|/h ≈ 1e-9 (|L|
// is O(10)); g itself is stored in fp32, ≤ 6e-8·max|g| off. A wrong term
// in the chain rule is O(1) relative to the tensor's scale.

struct FdCase {
  LayerType type;
  int64_t batch, seq;
};

struct FdResult {
  double worst = 0;  // max over elements of |fd − g| / max|g|
  int64_t checked = 0;
};

// Central difference of the loss in element i of v (restored after).
double central_difference(const Config& c, LayerType t, reference::Point64& p, std::vector<double>& v, size_t i,
                          const Tensor& dy, const reference::Selection& sel, double h) {
  const double v0 = v[i];
  v[i] = v0 + h;
  const double up = reference::loss_f64(c, t, p, dy, sel);
  v[i] = v0 - h;
  const double down = reference::loss_f64(c, t, p, dy, sel);
  v[i] = v0;
  return (up - down) / (2 * h);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesOnEveryElement) {
  const Config c = tiny_config();
  const double h = 1e-6, tol = 1e-6;
  std::mt19937 rng(4242);
  // S > W everywhere; CSA: T = 5 entries > k = 2 (token 10's window is
  // incomplete); HCA: T = 3, token 9 waits; the windows straddle RoPE pairs.
  for (const FdCase& k : {FdCase{LayerType::sliding, 1, 7}, FdCase{LayerType::csa, 2, 11},
                          FdCase{LayerType::hca, 2, 10}}) {
    SCOPED_TRACE(std::string(layer_type_name(k.type)));
    const LayerWeights w = test::random_weights(c, k.type, rng);
    const Tensor x = test::random_tensor({k.batch, k.seq, c.hidden_size}, rng, 2.0f);
    const Tensor dy = test::random_tensor(x.shape, rng, 1.0f);
    const reference::Selection sel = reference::select_topk(c, k.type, w, x);
    if (k.type == LayerType::csa) {  // the selection matters: the last query drops entries
      for (const auto& seq : sel) ASSERT_EQ(seq.back().size(), 2u);
    }

    reference::Point64 p = reference::widen(c, k.type, w, x);
    // The double forward is the fp32 reference forward's function.
    const std::vector<double> y64 = reference::forward_f64(c, k.type, p, sel);
    EXPECT_TRUE(test::all_close(reference::forward(c, k.type, w, x),
                                Tensor(x.shape, std::vector<float>(y64.begin(), y64.end())), 1e-5, 1e-5));

    const LayerGradients g = reference::backward(c, k.type, w, x, dy);
    FdResult all;
    for (const WeightSpec& s : gradient_specs(c, k.type, x.shape)) {
      const Tensor& grad = grad_of(g, s.name);
      ASSERT_EQ(grad.shape, s.shape) << s.name;
      const double scale = max_abs(grad);
      if (is_indexer(s.name)) {  // no gradient flows through the selection
        EXPECT_EQ(scale, 0.0) << s.name;
        continue;
      }
      ASSERT_GT(scale, 0.0) << s.name << " got no gradient";
      std::vector<double>& v = s.name == "dx" ? p.x : p.w.at(s.name);
      double worst = -1, worst_fd = 0;
      size_t at = 0;
      for (size_t i = 0; i < v.size(); ++i, ++all.checked) {
        const double fd = central_difference(c, k.type, p, v, i, dy, sel, h);
        if (const double err = std::fabs(fd - grad.data[i]) / scale; !(err <= worst)) worst = err, worst_fd = fd, at = i;
      }
      EXPECT_LE(worst, tol) << s.name << "[" << at << "]: fd " << worst_fd << " vs " << grad.data[at];
      all.worst = std::max(all.worst, worst);
    }
    RecordProperty(std::string(layer_type_name(k.type)) + "_worst_fd_error", std::to_string(all.worst));
    std::printf("[ fd ] %s: %lld elements, worst |fd - g| / max|g| = %.2e\n", std::string(layer_type_name(k.type)).c_str(),
                static_cast<long long>(all.checked), all.worst);
  }
}

// With S < rate no window completes: the compressor gets exactly zero
// gradient (incomplete windows produce nothing), every other tensor some.
TEST(ReferenceBackward, NoEntriesMeansNoCompressorGradient) {
  const Config c = tiny_config();
  std::mt19937 rng(5);
  for (LayerType t : {LayerType::csa, LayerType::hca}) {
    const LayerWeights w = test::random_weights(c, t, rng);
    const int64_t s = c.compress_rate(t) - 1;
    const Tensor x = test::random_tensor({2, s, c.hidden_size}, rng, 2.0f);
    const LayerGradients g = reference::backward(c, t, w, x, test::random_tensor(x.shape, rng, 1.0f));
    for (const WeightSpec& sp : expected_weights(c, t)) {
      const double m = max_abs(grad_of(g, sp.name));
      if (sp.name.rfind("compressor.", 0) == 0) EXPECT_EQ(m, 0.0) << sp.name;
      else EXPECT_GT(m, 0.0) << sp.name;
    }
  }
}

}  // namespace
}  // namespace dsv4
