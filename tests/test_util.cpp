#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>

namespace dsv4::test {

std::string data_path(const std::string& rel) { return std::string(DSV4_TEST_DATA) + "/" + rel; }

std::filesystem::path dsv4_binary() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : self.parent_path().parent_path() / "dsv4";
}

int sh(const std::string& cmd, const std::filesystem::path& log) {
  return std::system((cmd + " > '" + log.string() + "' 2>&1").c_str());
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape == b.shape && (a.empty() || std::memcmp(a.ptr(), b.ptr(), a.data.size() * sizeof(float)) == 0);
}

Tensor rows(const Tensor& x, int64_t from, int64_t n) {
  const int64_t d = x.dim(1);
  return Tensor({n, d}, std::vector<float>(x.data.begin() + from * d, x.data.begin() + (from + n) * d));
}

Tensor random_tensor(Shape shape, std::mt19937& rng, float scale) {
  Tensor t(std::move(shape));
  std::uniform_real_distribution<float> u(-scale, scale);
  for (float& v : t.data) v = u(rng);
  return t;
}

namespace {
Tensor linear(int64_t out, int64_t in, std::mt19937& rng) {
  return random_tensor({out, in}, rng, static_cast<float>(std::sqrt(3.0 / static_cast<double>(in))));
}
Tensor norm_weight(int64_t n, std::mt19937& rng) {
  Tensor t = random_tensor({n}, rng, 0.2f);
  for (float& v : t.data) v += 1.0f;
  return t;
}
CompressorWeights compressor(int64_t in_w, int64_t width, int64_t rate, int64_t d, std::mt19937& rng) {
  return {linear(in_w, d, rng), linear(in_w, d, rng), random_tensor({rate, in_w}, rng, 0.5f), norm_weight(width, rng)};
}
}  // namespace

LayerWeights random_weights(const Config& c, LayerType t, std::mt19937& rng) {
  const int64_t d = c.hidden_size, hd = c.head_dim, h = c.num_attention_heads, g = c.o_groups;
  LayerWeights w;
  w.q_a_proj = linear(c.q_lora_rank, d, rng);
  w.q_a_norm = norm_weight(c.q_lora_rank, rng);
  w.q_b_proj = linear(h * hd, c.q_lora_rank, rng);
  w.kv_proj = linear(hd, d, rng);
  w.kv_norm = norm_weight(hd, rng);
  w.o_a_proj = linear(g * c.o_lora_rank, h * hd / g, rng);
  w.o_b_proj = linear(d, g * c.o_lora_rank, rng);
  w.sinks = random_tensor({h}, rng, 1.0f);
  if (t == LayerType::csa) {
    w.compressor = compressor(2 * hd, hd, c.compress_rate_csa, d, rng);
    IndexerWeights ix;
    ix.compressor = compressor(2 * c.index_head_dim, c.index_head_dim, c.compress_rate_csa, d, rng);
    ix.q_b_proj = linear(c.index_n_heads * c.index_head_dim, c.q_lora_rank, rng);
    ix.weights_proj = linear(c.index_n_heads, d, rng);
    w.indexer = std::move(ix);
  } else if (t == LayerType::hca) {
    w.compressor = compressor(hd, hd, c.compress_rate_hca, d, rng);
  }
  return w;
}

// Small random dimensions that pass Config::validate (every type, any S).
Config random_config(std::mt19937& rng) {
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  Config c = small_config();
  c.hidden_size = pick({16, 24, 32});
  c.num_attention_heads = pick({1, 2, 3, 4});
  c.head_dim = pick({8, 16, 24});
  c.qk_rope_head_dim = pick({2, 4, 8});
  c.q_lora_rank = pick({8, 12, 16});
  c.o_groups = c.num_attention_heads % 2 == 0 ? pick({1, 2}) : 1;
  c.o_lora_rank = pick({4, 8});
  c.sliding_window = pick({1, 2, 3, 5, 8, 16});
  c.compress_rate_csa = pick({1, 2, 3, 4});
  c.compress_rate_hca = pick({2, 3, 5, 8});
  c.index_n_heads = pick({1, 2, 4});
  c.index_head_dim = c.qk_rope_head_dim * pick({1, 2, 3});
  c.index_topk = pick({1, 2, 3, 5, 8});
  c.rope_scaling.original_max_position_embeddings = pick({16, 64});
  return c;
}

namespace {

WeightId id_of(const std::string& name) {
  const WeightEntry* e = find_weight(name);
  if (!e) fail("no weight named '" + name + "'");
  return e->id;
}

}  // namespace

Tensor& weight_named(LayerWeights& w, const std::string& name) { return weight(w, id_of(name)); }
const Tensor& weight_named(const LayerWeights& w, const std::string& name) { return weight(w, id_of(name)); }

Config small_config(const Dims& d) {
  Config c;
  c.hidden_size = d.hidden_size;
  c.num_attention_heads = d.heads;
  c.head_dim = d.head_dim;
  c.qk_rope_head_dim = d.rope_dims;
  c.q_lora_rank = d.q_rank;
  c.o_groups = d.o_groups;
  c.o_lora_rank = d.o_rank;
  c.sliding_window = d.window;
  c.compress_rate_csa = d.rate_csa;
  c.compress_rate_hca = d.rate_hca;
  c.index_n_heads = d.index_heads;
  c.index_head_dim = d.index_dim;
  c.index_topk = d.topk;
  c.rope_scaling.factor = 16;
  c.rope_scaling.original_max_position_embeddings = 64;
  return c;
}

bool ambiguous_topk(const Config& c, LayerType t, const Intermediates& d, int64_t p0) {
  if (t != LayerType::csa || d.index_scores.empty()) return false;
  const int64_t s = d.index_scores.dim(0), n_t = d.index_scores.dim(1), k = c.index_topk;
  for (int64_t q = 0; q < s; ++q) {
    const int64_t elig = std::min(n_t, (p0 + q + 1) / c.compress_rate_csa);
    if (elig <= k) continue;
    std::vector<float> v(&d.index_scores.data[q * n_t], &d.index_scores.data[q * n_t] + elig);
    std::sort(v.begin(), v.end(), std::greater<>());
    const float a = v[k - 1], b = v[k];
    if (a == 0.0f && b == 0.0f) continue;  // every head's ReLU is 0: exactly 0 in any implementation, ties go by index
    if (a - b <= 1e-4f * std::max(std::fabs(a), std::fabs(b)) + 1e-6f) return true;
  }
  return false;
}

bool ambiguous_topk(const Config& c, LayerType t, const std::vector<Intermediates>& batch) {
  return std::any_of(batch.begin(), batch.end(), [&](const Intermediates& d) { return ambiguous_topk(c, t, d); });
}

::testing::AssertionResult all_close(const float* ours, const Tensor& ref, double atol, double rtol) {
  int64_t worst = -1;
  double worst_excess = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double d = std::fabs(static_cast<double>(ours[i]) - ref.data[i]);
    const double excess = d - (atol + rtol * std::fabs(ref.data[i]));
    if (!(excess <= 0) && (worst < 0 || excess > worst_excess)) worst = i, worst_excess = excess;
  }
  if (worst < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "element " << worst << " of " << shape_str(ref.shape) << ": ours "
                                       << ours[worst] << " vs ref " << ref.data[worst];
}

::testing::AssertionResult all_close(const Tensor& ours, const Tensor& ref, double atol, double rtol) {
  if (ours.shape != ref.shape)
    return ::testing::AssertionFailure() << "shape " << shape_str(ours.shape) << " vs " << shape_str(ref.shape);
  return all_close(ours.ptr(), ref, atol, rtol);
}

}  // namespace dsv4::test
