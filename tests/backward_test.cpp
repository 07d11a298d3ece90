// The backward pass. First the naive reference::backward against central
// finite differences of its own double-precision loss (tiny layers, every
// tensor, every element); then the fast Layer::backward against the
// reference on random shapes and the conformance configurations, its thread
// invariance, forward_train == forward, and its errors.
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
#include "pipeline/tape.h"
#include "reference.h"
#include "test_util.h"

namespace dsv4 {
namespace {

const LayerType kTypes[] = {LayerType::sliding, LayerType::csa, LayerType::hca};

// Hidden 16, 2 heads of 8 (4 with RoPE), window 3, CSA rate 2 with top-2, HCA rate 3.
Config tiny_config() {
  return test::small_config({.hidden_size = 16,
                             .heads = 2,
                             .head_dim = 8,
                             .rope_dims = 4,
                             .q_rank = 8,
                             .o_rank = 4,
                             .window = 3,
                             .rate_csa = 2,
                             .rate_hca = 3,
                             .index_heads = 2,
                             .index_dim = 4,
                             .topk = 2});
}

bool is_indexer(const std::string& name) { return name.rfind("compressor.indexer.", 0) == 0; }

// The gradient tensor of `name` ("dx" or a spec weight name).
const Tensor& grad_of(const LayerGradients& g, const std::string& name) {
  if (name == "dx") return g.dx;
  return test::weight_named(g.weights, name);
}

struct GradSpec {
  std::string name;
  Shape shape;
};
// "dx", then every weight of the layer type.
std::vector<GradSpec> gradient_specs(const Config& c, LayerType t, const Shape& x_shape) {
  std::vector<GradSpec> s = {{"dx", x_shape}};
  for (const WeightSpec& w : weight_specs(c, t)) s.push_back({w.name, w.shape});
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
  // incomplete); HCA: T = 3, token 9 waits.
  for (const FdCase& k :
       {FdCase{LayerType::sliding, 1, 7}, FdCase{LayerType::csa, 2, 11}, FdCase{LayerType::hca, 2, 10}}) {
    SCOPED_TRACE(std::string(layer_type_name(k.type)));
    const LayerWeights w = test::random_weights(c, k.type, rng);
    const Tensor x = test::random_tensor({k.batch, k.seq, c.hidden_size}, rng, 2.0f);
    const Tensor dy = test::random_tensor(x.shape, rng, 1.0f);
    const reference::Selection sel = reference::select_topk(c, k.type, w, x);
    if (k.type == LayerType::csa) {  // the selection matters: later queries drop entries
      ASSERT_GT(k.seq / c.compress_rate_csa, c.index_topk);
      for (const auto& seq : sel) ASSERT_EQ(seq.back().size(), static_cast<size_t>(c.index_topk));
    }

    reference::Point64 p = reference::widen(c, k.type, w, x);
    // The double forward is the fp32 reference forward's function.
    const std::vector<double> y64 = reference::forward_f64(c, k.type, p, sel);
    EXPECT_TRUE(test::all_close(reference::forward(c, k.type, w, x),
                                Tensor(x.shape, std::vector<float>(y64.begin(), y64.end())), 1e-5, 1e-5));

    const LayerGradients g = reference::backward(c, k.type, w, x, dy);
    FdResult all;
    for (const GradSpec& s : gradient_specs(c, k.type, x.shape)) {
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
        if (const double err = std::fabs(fd - grad.data[i]) / scale; !(err <= worst))
          worst = err, worst_fd = fd, at = i;
      }
      EXPECT_LE(worst, tol) << s.name << "[" << at << "]: fd " << worst_fd << " vs " << grad.data[at];
      all.worst = std::max(all.worst, worst);
    }
    RecordProperty(std::string(layer_type_name(k.type)) + "_worst_fd_error", std::to_string(all.worst));
    std::printf("[ fd ] %s: %lld elements, worst |fd - g| / max|g| = %.2e (L = %.3g)\n",
                std::string(layer_type_name(k.type)).c_str(), static_cast<long long>(all.checked), all.worst,
                reference::loss_f64(c, k.type, p, dy, sel));
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
    for (const WeightSpec& sp : weight_specs(c, t)) {
      const double m = max_abs(grad_of(g, sp.name));
      if (sp.name.rfind("compressor.", 0) == 0)
        EXPECT_EQ(m, 0.0) << sp.name;
      else
        EXPECT_GT(m, 0.0) << sp.name;
    }
  }
}

// ---------------------------------------------------------------------------
// Layer::backward (fp32) == reference::backward (double).
//
// Per element |fast − ref| ≤ 1e-5·scale + 1e-5·|ref|, scale = max |ref| of
// that tensor: a weight's gradient is a sum over every token of every
// sequence, so an element near zero is a cancellation whose fp32 error
// follows the size of the tensor's terms, not its own value. Where the
// reference is exactly zero (the indexer, a compressor without entries) the
// fast path must be exactly zero too.

// `sink_terms` (reference::backward's): the sinks' gradient per head is a sum
// over every query of terms p_sink·Δ that can cancel to far below their size,
// and fp32 rounding is relative to the terms, so that tensor's scale is the
// largest Σ|term| bound instead (a case with one head and 6 queries cancels
// 0.0055 out of terms ~1: fp32 then differs from double by 6e-7).
::testing::AssertionResult gradients_close(const LayerGradients& fast, const LayerGradients& ref, const Config& c,
                                           LayerType t, double* worst = nullptr,
                                           const std::vector<double>* sink_terms = nullptr) {
  for (const GradSpec& s : gradient_specs(c, t, ref.dx.shape)) {
    const Tensor &r = grad_of(ref, s.name), &f = grad_of(fast, s.name);
    if (f.shape != r.shape)
      return ::testing::AssertionFailure()
             << s.name << " has shape " << shape_str(f.shape) << ", expected " << shape_str(s.shape);
    double scale = max_abs(r);
    if (s.name == "sinks" && sink_terms)
      for (double v : *sink_terms) scale = std::max(scale, v);
    if (const auto ok = test::all_close(f, r, 1e-5 * scale, 1e-5); !ok)
      return ::testing::AssertionFailure() << s.name << ": " << ok.message();
    for (int64_t i = 0; worst && i < r.numel(); ++i)
      *worst = std::max(*worst, std::fabs(static_cast<double>(f.data[i]) - r.data[i]) / scale);
  }
  return ::testing::AssertionSuccess();
}

// Random configurations and shapes: odd S, S < W, S < m (no entries), T < k
// and T > k, batch 1-3, every type; cases whose CSA selection is ill-posed
// (test::ambiguous_topk) are redrawn.
TEST(FastBackward, MatchesReferenceOnManyShapes) {
  std::mt19937 rng(1127);
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  int cases = 0, redraws = 0;
  std::map<std::string, int> met;
  double worst = 0;
  while (cases < 150) {
    const LayerType t = kTypes[cases % 3];
    const Config c = test::random_config(rng);
    const int64_t batch = 1 + static_cast<int64_t>(rng() % 3);
    const int64_t seq = pick({1, 2, 3, 5, 7}) + static_cast<int64_t>(rng() % 2 ? rng() % 30 : 0);
    const LayerWeights w = test::random_weights(c, t, rng);
    const Tensor x = test::random_tensor({batch, seq, c.hidden_size}, rng, 2.0f);
    const Tensor dy = test::random_tensor(x.shape, rng, 1.0f);
    std::vector<Intermediates> dbg;
    reference::forward(c, t, w, x, &dbg);
    if (test::ambiguous_topk(c, t, dbg)) {
      ASSERT_LT(++redraws, 100);
      continue;
    }
    ++cases;
    const int64_t rate = c.compress_rate(t);
    if (seq % 2) ++met["odd S"];
    if (seq < c.sliding_window) ++met["S < W"];
    if (rate && seq < rate) ++met["no entries"];
    if (t == LayerType::csa) ++met[seq / rate > c.index_topk ? "T > k" : "T <= k"];
    SCOPED_TRACE("case " + std::to_string(cases) + " " + std::string(layer_type_name(t)) +
                 " B=" + std::to_string(batch) + " S=" + std::to_string(seq));
    std::vector<double> sink_terms;
    const LayerGradients ref = reference::backward(c, t, w, x, dy, reference::select_topk(c, t, w, x), &sink_terms);
    const LayerGradients fast = Layer(c, t, w).backward(x, dy);
    ASSERT_TRUE(gradients_close(fast, ref, c, t, &worst, &sink_terms));
  }
  std::printf("[ fast vs ref ] %d cases, worst |fast - ref| / max|ref| = %.2e\n", cases, worst);
  for (const char* what : {"odd S", "S < W", "no entries", "T > k", "T <= k"}) EXPECT_GE(met[what], 5) << what;
}

std::vector<std::string> stateless_files() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(test::data_path("conformance")))
    if (e.path().extension() == ".safetensors" && e.path().filename().string().find("_stateless_") != std::string::npos)
      out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string file_test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = info.param.substr(0, info.param.find('.'));
  std::replace_if(
      n.begin(), n.end(), [](char ch) { return !std::isalnum(static_cast<unsigned char>(ch)); }, '_');
  return n;
}

// The conformance configurations, weights and inputs, with a seeded random dy.
class FastBackwardConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(FastBackwardConformance, MatchesReference) {
  const SafeTensors f = SafeTensors::open(test::data_path("conformance/" + GetParam()));
  const LayerSpec spec = layer_spec_from_json_text(f.meta("config"), "config");
  const LayerWeights w = load_layer_weights(f, spec.config, spec.type);
  const Tensor x = f.f32("chunk0.hidden_states");
  std::mt19937 rng(77);
  const Tensor dy = test::random_tensor(x.shape, rng, 1.0f);
  std::vector<double> sink_terms;
  const LayerGradients ref = reference::backward(spec.config, spec.type, w, x, dy,
                                                 reference::select_topk(spec.config, spec.type, w, x), &sink_terms);
  const LayerGradients fast = Layer(spec.config, spec.type, w).backward(x, dy);
  double worst = 0;
  EXPECT_TRUE(gradients_close(fast, ref, spec.config, spec.type, &worst, &sink_terms));
  RecordProperty("worst_error", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Stateless, FastBackwardConformance, ::testing::ValuesIn(stateless_files()), file_test_name);

TEST(FastBackward, CoversEveryStatelessConformanceFile) { EXPECT_EQ(stateless_files().size(), 18u); }

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape == b.shape && std::memcmp(a.ptr(), b.ptr(), a.data.size() * sizeof(float)) == 0;
}

// The CSA selection the fast forward made (recorded in its tape), per
// sequence and query, as the reference takes it.
reference::Selection tape_selection(const Tape& tape) {
  reference::Selection sel;
  for (const SeqTape& s : tape.data()->seqs) {
    sel.emplace_back();
    for (int64_t t = 0; t < s.len && s.width > 0; ++t) {
      sel.back().emplace_back();
      for (int64_t i = 0; i < s.width; ++i)
        if (const int32_t e = s.topk[t * s.width + i]; e >= 0) sel.back().back().push_back(e);
    }
  }
  return sel;
}

// More than Layer::kPrefillChunk tokens (the forward runs in pieces) and, for
// CSA, T = 550 entries > k: the gradients are bit-identical at 1, 2 and 3
// threads, forward_train is forward to the bit, and both match the reference.
// With 2 × 1101 queries choosing 6 of up to 550 entries some near-tie is
// certain, so the reference takes the selection the fast forward made.
TEST(FastBackward, LongSequenceBitIdenticalForAnyThreadCountAndMatchesReference) {
  std::mt19937 rng(1101);
  Config c = tiny_config();
  c.index_topk = 6;
  const int64_t s = Layer::kPrefillChunk + 77;
  const int saved = omp_get_max_threads();
  for (LayerType t : kTypes) {
    SCOPED_TRACE(std::string(layer_type_name(t)));
    const LayerWeights w = test::random_weights(c, t, rng);
    const Tensor x = test::random_tensor({2, s, c.hidden_size}, rng, 2.0f);
    const Tensor dy = test::random_tensor(x.shape, rng, 1.0f);
    const Layer layer(c, t, w);
    omp_set_num_threads(1);
    Tape tape;
    EXPECT_TRUE(same_bits(layer.forward_train(x, tape), layer.forward(x)));
    const LayerGradients g1 = layer.backward(tape, dy);
    for (int threads : {2, 3}) {
      omp_set_num_threads(threads);
      const LayerGradients g = layer.backward(x, dy);
      for (const GradSpec& sp : gradient_specs(c, t, x.shape))
        EXPECT_TRUE(same_bits(grad_of(g, sp.name), grad_of(g1, sp.name))) << sp.name << " at " << threads << " threads";
    }
    omp_set_num_threads(saved);
    const reference::Selection sel = tape_selection(tape);
    if (t == LayerType::csa) {
      ASSERT_EQ(sel.size(), 2u);
      ASSERT_EQ(sel[0].size(), static_cast<size_t>(s));
      EXPECT_EQ(sel[0].back().size(), 6u);  // T = 550 > k: the selection matters
    }
    std::vector<double> sink_terms;
    const LayerGradients ref = reference::backward(c, t, w, x, dy, sel, &sink_terms);
    EXPECT_TRUE(gradients_close(g1, ref, c, t, nullptr, &sink_terms));
  }
}

TEST(FastBackward, ForwardTrainIsForwardBitForBit) {
  std::mt19937 rng(37);
  const Config c = test::small_config();
  for (LayerType t : kTypes) {
    const Layer layer(c, t, test::random_weights(c, t, rng));
    for (const Shape& shape : {Shape{2, 37, c.hidden_size}, Shape{5, c.hidden_size}}) {
      const Tensor x = test::random_tensor(shape, rng, 2.0f);
      Tape tape;
      const Tensor y = layer.forward_train(x, tape);
      EXPECT_TRUE(same_bits(y, layer.forward(x))) << layer_type_name(t) << " " << shape_str(shape);
      EXPECT_FALSE(tape.empty());
      EXPECT_GT(tape.bytes(), 0u);
    }
  }
}

// f must throw dsv4::Error whose message contains `phrase`.
void expect_error(const std::function<void()>& f, const std::string& phrase) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming '" << phrase << "'";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr(phrase));
  }
}

TEST(FastBackward, RejectsBadDyForeignTapesAndDeploymentNumerics) {
  std::mt19937 rng(3);
  const Config c = test::small_config();
  for (LayerType t : kTypes) {
    SCOPED_TRACE(std::string(layer_type_name(t)));
    const LayerWeights w = test::random_weights(c, t, rng);
    const Layer layer(c, t, w), other(c, t, test::random_weights(c, t, rng));
    const Tensor x = test::random_tensor({2, 9, c.hidden_size}, rng, 2.0f);
    Tape tape;
    layer.forward_train(x, tape);
    for (const Shape& bad : {Shape{2, 8, c.hidden_size}, Shape{9, c.hidden_size}, Shape{2, 9, c.hidden_size + 1}}) {
      const Tensor dy(bad);
      expect_error([&] { layer.backward(tape, dy); }, "dy");
      expect_error([&] { layer.backward(x, dy); }, "dy");
    }
    for (float v : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      Tensor dy(x.shape);
      dy.data[17] = v;
      expect_error([&] { layer.backward(tape, dy); }, "dy");
    }
    const Tensor dy(x.shape);
    expect_error([&] { other.backward(tape, dy); }, "tape");
    expect_error([&] { layer.backward(Tape(), dy); }, "tape");
    const Layer deployed(c, t, w, LayerOptions{WeightFormat::f32, Numerics::deployment});
    Tape dtape;
    expect_error([&] { deployed.forward_train(x, dtape); }, "deployment");
    expect_error([&] { deployed.backward(x, dy); }, "deployment");
  }
}

// Accumulating into reused gradients (Layer::zero_gradients) and reusing a
// tape for a sequence of another length: the same bits as fresh objects; a
// second backward into the same gradients doubles every weight gradient (to
// rounding: BLAS adds its partial sums into the existing values), and dx is
// set, not summed. Gradients of the wrong shapes are refused.
TEST(FastBackward, AccumulatesIntoReusedGradientsAndTapes) {
  std::mt19937 rng(41);
  const Config c = test::small_config();
  for (LayerType t : kTypes) {
    SCOPED_TRACE(std::string(layer_type_name(t)));
    const Layer layer(c, t, test::random_weights(c, t, rng));
    Tape tape;
    LayerGradients acc = layer.zero_gradients();
    for (int64_t s : {29, 13}) {  // the second forward reuses the tape's (larger) memory
      const Tensor x = test::random_tensor({2, s, c.hidden_size}, rng, 2.0f);
      const Tensor dy = test::random_tensor(x.shape, rng, 1.0f);
      EXPECT_TRUE(same_bits(layer.forward_train(x, tape), layer.forward(x)));
      const LayerGradients fresh = layer.backward(x, dy);
      acc = layer.zero_gradients();
      layer.backward(tape, dy, acc);
      for (const GradSpec& sp : gradient_specs(c, t, x.shape))
        EXPECT_TRUE(same_bits(grad_of(acc, sp.name), grad_of(fresh, sp.name))) << sp.name << " S=" << s;
      layer.backward(tape, dy, acc);
      EXPECT_TRUE(same_bits(acc.dx, fresh.dx));
      for (const WeightSpec& sp : weight_specs(c, t)) {
        Tensor twice = grad_of(fresh, sp.name);
        double scale = 0;
        for (float& v : twice.data) scale = std::max(scale, std::fabs(double(v *= 2.0f)));
        EXPECT_TRUE(test::all_close(grad_of(acc, sp.name), twice, 1e-6 * scale, 1e-6)) << sp.name << " S=" << s;
      }
    }
    LayerGradients wrong = layer.zero_gradients();
    wrong.weights.q_a_proj = Tensor({1, 1});
    expect_error([&] { layer.backward(tape, Tensor(tape.data()->x_shape), wrong); }, "q_a_proj.weight");
  }
}

// Weights kept as stored (FP8 + UE8M0 blocks, BF16: WeightFormat::native):
// the gradients are those of the f32 layer on the dequantised values (the
// backward multiplies by exactly those values; the forwards differ by at most
// their tile boundaries, ~1e-7 relative).
TEST(FastBackward, NativeWeightsGiveTheDequantisedLayersGradients) {
  std::mt19937 rng(9);
  const Config c = test::small_config({.hidden_size = 160});  // > 128: several FP8 scale blocks per row
  for (LayerType t : kTypes) {
    SCOPED_TRACE(std::string(layer_type_name(t)));
    LayerWeights stored = test::random_weights(c, t, rng);
    store_as_released(stored, t);
    LayerWeights dequantised = stored;
    for (const auto& [name, m] : dequantised.stored) test::weight_named(dequantised, name) = m.dequantised();
    dequantised.stored.clear();
    const Tensor x = test::random_tensor({2, 41, c.hidden_size}, rng, 2.0f);
    const Tensor dy = test::random_tensor(x.shape, rng, 1.0f);
    const LayerGradients native = Layer(c, t, stored, LayerOptions{WeightFormat::native}).backward(x, dy);
    const LayerGradients f32 = Layer(c, t, dequantised).backward(x, dy);
    EXPECT_TRUE(gradients_close(native, f32, c, t));
  }
}

}  // namespace
}  // namespace dsv4
