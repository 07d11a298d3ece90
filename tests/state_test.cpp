// Decode state: chunked == one-shot over random configs and chunkings,
// forward_batch == separate calls (to 1e-6; bit for bit across thread counts),
// clone, reset, bytes, and save/load (round trip and every kind of bad file).
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <tuple>

#include "dsv4/conformance.h"
#include "dsv4/layer.h"
#include "dsv4/state.h"
#include "reference.h"
#include "test_util.h"

namespace dsv4 {
namespace {

const LayerType kTypes[] = {LayerType::sliding, LayerType::csa, LayerType::hca};

// A random config a layer in numerics n accepts (deployment: D_I a power of two).
Config random_config(std::mt19937& rng, Numerics n) {
  Config c = test::random_config(rng);
  if (n == Numerics::deployment) c.index_head_dim = std::max<int64_t>(c.qk_rope_head_dim, int64_t{8} << (rng() % 2));
  return c;
}
LayerOptions with(Numerics n) { return LayerOptions{WeightFormat::f32, n}; }


// Rows [from, from + n) of x [S, d] as [n, d].
Tensor rows(const Tensor& x, int64_t from, int64_t n) {
  const int64_t d = x.dim(1);
  return Tensor({n, d}, std::vector<float>(x.data.begin() + from * d, x.data.begin() + (from + n) * d));
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape == b.shape && (a.empty() || std::memcmp(a.ptr(), b.ptr(), a.data.size() * sizeof(float)) == 0);
}

// Output of feeding x [S, d] through `st` in `chunks`, and (if asked) each row's top-k set.
struct Fed {
  Tensor y;
  std::vector<std::set<int64_t>> topk;
};
Fed feed(const Layer& layer, const Tensor& x, const std::vector<int64_t>& chunks, LayerState& st, bool debug = false) {
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
Tensor one_shot(const Layer& layer, const Tensor& x, Intermediates& dbg) {
  std::vector<Intermediates> all;
  Tensor y = layer.forward(Tensor({1, x.dim(0), x.dim(1)}, x.data), &all);
  dbg = std::move(all.at(0));
  y.shape = {x.dim(0), x.dim(1)};
  return y;
}

std::vector<int64_t> chunks_at(std::vector<int64_t> cuts, int64_t s) {  // boundaries in (0, s) -> lengths
  std::erase_if(cuts, [s](int64_t at) { return at <= 0 || at >= s; });
  cuts.push_back(s);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<int64_t> out;
  for (size_t i = 0; i < cuts.size(); ++i) out.push_back(cuts[i] - (i ? cuts[i - 1] : 0));
  return out;
}
std::vector<int64_t> chunks_of(int64_t len, int64_t s) {
  std::vector<int64_t> out;
  for (int64_t at = 0; at < s; at += len) out.push_back(std::min(len, s - at));
  return out;
}
std::vector<int64_t> random_chunks(std::mt19937& rng, int64_t s, int64_t max_len) {
  std::vector<int64_t> out;
  for (int64_t at = 0; at < s;) {
    const int64_t n = std::min<int64_t>(s - at, rng() % (max_len + 1));  // 0 = an empty chunk, a no-op
    out.push_back(n);
    at += n;
  }
  return out;
}

// A fresh folder of this process (other builds may run the same tests at once).
std::filesystem::path scratch_dir(const std::string& name) {
  const auto dir =
      std::filesystem::path(::testing::TempDir()) / ("dsv4_state_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::string show(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t n : v) s += (s.empty() ? "" : ",") + std::to_string(n);
  return s;
}

// ---- chunked prefill and decode == one-shot ---------------------------------

// Deployment numerics: true if the reference's roundings of x came near a tie
// (two fp32 evaluation orders may round differently there; see reference/numerics.h).
// The margin covers how far the fast path's chunked and one-shot values (BLAS tiles
// vs the row-invariant kernel) and the reference's can drift apart: ~1e-6 relative.
bool rounding_near_tie(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x) {
  double tie = 0;
  reference::forward(c, t, w, Tensor({1, x.dim(0), x.dim(1)}, x.data), nullptr, Numerics::deployment, &tie);
  return tie <= 2e-6;
}

void chunkings_equal_one_shot(Numerics n, int n_cases) {
  std::mt19937 rng(424242);
  int cases = 0, redraws = 0, patterns = 0;
  for (int i = 0; cases < n_cases; ++i) {
    const LayerType type = kTypes[i % 3];
    const Config c = random_config(rng, n);
    const int64_t r = c.compress_rate(type), w = c.sliding_window;
    const int64_t s = std::max(2 * r, w) + 1 + static_cast<int64_t>(rng() % 30);
    const LayerWeights weights = test::random_weights(c, type, rng);
    const Layer layer(c, type, weights, with(n));
    const Tensor x = test::random_tensor({s, c.hidden_size}, rng, 2.0f);
    Intermediates ref_dbg;
    const Tensor ref = one_shot(layer, x, ref_dbg);
    if (test::ambiguous_topk(c, type, ref_dbg) || (n == Numerics::deployment && rounding_near_tie(c, type, weights, x))) {
      ASSERT_LT(++redraws, 100);
      continue;
    }
    ++cases;
    std::vector<std::vector<int64_t>> all = {
        chunks_at({r - 1, r, w - 1, w, 2 * r}, s),  // boundaries on the window and compressor edges
        chunks_at({r - 1, w}, s),
        chunks_at({r, w - 1, 2 * r}, s),
        chunks_of(1, s),  // token-by-token decode
        random_chunks(rng, s, 2 * w + 2 * r),
        random_chunks(rng, s, 5)};
    for (int64_t len : {r - 1, r, w - 1, w, 2 * r})
      if (len > 0) all.push_back(chunks_of(len, s));
    for (const auto& chunks : all) {
      ++patterns;
      SCOPED_TRACE(std::string(layer_type_name(type)) + " case " + std::to_string(cases) + " S=" + std::to_string(s) +
                   " r=" + std::to_string(r) + " W=" + std::to_string(w) + " chunks " + show(chunks));
      LayerState st = layer.new_state();
      const Fed f = feed(layer, x, chunks, st, type == LayerType::csa);
      EXPECT_EQ(st.position(), s);
      ASSERT_TRUE(test::all_close(f.y, ref, 1e-6, 1e-6));
      EXPECT_EQ(st.numerics(), n);
      if (type != LayerType::csa) continue;
      for (int64_t t = 0; t < s; ++t) ASSERT_EQ(f.topk.at(t), topk_set(ref_dbg.topk, t)) << "query " << t;
    }
  }
  EXPECT_GT(patterns, 8 * n_cases);  // about 11 chunkings per case
}

TEST(StateChunking, AnyChunkingEqualsOneShot) { chunkings_equal_one_shot(Numerics::reference, 120); }
TEST(StateChunking, AnyChunkingEqualsOneShotDeployment) { chunkings_equal_one_shot(Numerics::deployment, 60); }

// ---- forward_batch == separate forward calls ----------------------------------

// Stored rows, read as fp32.
::testing::AssertionResult close(const RowStore& a, const RowStore& b) {
  auto t = [](const RowStore& s) {
    std::vector<float> buf;
    const float* v = s.rows_f32(s.rows(), buf);
    return Tensor({s.rows() * s.width()}, std::vector<float>(v, v + s.rows() * s.width()));
  };
  return test::all_close(t(a), t(b), 1e-6, 1e-6);
}

// Several sequences at different positions, stepped with ragged chunks (prefill-
// sized, single tokens, empty) through forward_batch at 1, 2 and 3 threads and
// through separate forward calls. Batched results never depend on the thread
// count; against separate calls they are bit-identical if `bit_exact`, else
// equal within 1e-6 (steps with a top-k near-tie excepted, see test::ambiguous_topk).
void batch_vs_separate(bool bit_exact, Numerics n = Numerics::reference) {
  std::mt19937 rng(99);
  const int saved_threads = omp_get_max_threads();
  int compared = 0;
  for (int rep = 0; rep < 4; ++rep)
    for (LayerType type : kTypes) {
      const Config c = rep == 0 ? test::small_config() : random_config(rng, n);
      const Layer layer(c, type, test::random_weights(c, type, rng), with(n));
      const int n_seq = 2 + static_cast<int>(rng() % 4);
      std::vector<LayerState> sep(n_seq, layer.new_state());
      for (LayerState& st : sep)
        layer.forward(test::random_tensor({static_cast<int64_t>(rng() % 40), c.hidden_size}, rng, 2.0f), st);
      std::vector<LayerState> bat = sep;
      for (int step = 0; step < 6; ++step) {
        std::vector<Tensor> xs;
        for (int i = 0; i < n_seq; ++i) {
          const int64_t len = rng() % 3 == 0 ? 1 : static_cast<int64_t>(rng() % 20);
          xs.push_back(test::random_tensor({len, c.hidden_size}, rng, 2.0f));
        }
        std::vector<const Tensor*> xp;
        for (const Tensor& x : xs) xp.push_back(&x);
        std::vector<Tensor> want;
        std::vector<bool> tie;
        for (int i = 0; i < n_seq; ++i) {
          Intermediates dbg;
          const int64_t p0 = sep[i].position();
          want.push_back(layer.forward(xs[i], sep[i], &dbg));
          tie.push_back(test::ambiguous_topk(c, type, dbg, p0));
        }
        std::vector<Tensor> first;
        std::vector<LayerState> next;
        for (int threads : {1, 2, 3}) {
          omp_set_num_threads(threads);
          std::vector<LayerState> sts = bat;
          std::vector<LayerState*> sp;
          for (LayerState& st : sts) sp.push_back(&st);
          const std::vector<Tensor> got = layer.forward_batch(xp, sp);
          ASSERT_EQ(got.size(), xs.size());
          for (int i = 0; i < n_seq; ++i) {
            SCOPED_TRACE(std::string(layer_type_name(type)) + " rep " + std::to_string(rep) + " step " +
                         std::to_string(step) + " seq " + std::to_string(i) + " at " +
                         std::to_string(bat[i].position()) + " len " + std::to_string(xs[i].dim(0)) + " threads " +
                         std::to_string(threads));
            if (threads > 1) {
              ASSERT_TRUE(same_bits(got[i], first[i]));
              ASSERT_EQ(sts[i].compressor().entries, next[i].compressor().entries);
              ASSERT_EQ(sts[i].indexer().entries, next[i].indexer().entries);
              ASSERT_EQ(sts[i].window(), next[i].window());
              continue;
            }
            ASSERT_EQ(sts[i].position(), sep[i].position());
            if (bit_exact) {
              EXPECT_TRUE(same_bits(got[i], want[i]));
              EXPECT_EQ(sts[i].compressor().entries, sep[i].compressor().entries);
              EXPECT_EQ(sts[i].indexer().entries, sep[i].indexer().entries);
              EXPECT_EQ(sts[i].window(), sep[i].window());
            } else {
              if (!tie[i]) {
                EXPECT_TRUE(test::all_close(got[i], want[i], 1e-6, 1e-6));
              }
              EXPECT_TRUE(close(sts[i].compressor().entries, sep[i].compressor().entries));
              EXPECT_TRUE(close(sts[i].indexer().entries, sep[i].indexer().entries));
              EXPECT_TRUE(close(sts[i].window(), sep[i].window()));
            }
            compared += !tie[i];
          }
          if (threads == 1) first = got, next = sts;
        }
        bat = std::move(next);
      }
    }
  omp_set_num_threads(saved_threads);
  EXPECT_GT(compared, 200);
}

TEST(StateBatch, RaggedBatchEqualsSeparateCallsAnyThreadCount) { batch_vs_separate(false); }

// Short chunks share a row-invariant GEMM and long ones get their own BLAS
// calls, so a chunk's result never depends on the other chunks of the call.
TEST(StateBatch, RaggedBatchEqualsSeparateCallsBitForBit) { batch_vs_separate(true); }
TEST(StateBatch, RaggedBatchEqualsSeparateCallsBitForBitDeployment) { batch_vs_separate(true, Numerics::deployment); }

TEST(StateBatch, InputErrors) {
  std::mt19937 rng(5);
  const Config c = test::small_config();
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  LayerState a = layer.new_state(), b = layer.new_state();
  const Tensor x = test::random_tensor({3, c.hidden_size}, rng);
  auto expect_error = [](auto&& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {
    const Tensor* xs[] = {&x, &x};
    LayerState* sts[] = {&a, &a};
    expect_error([&] { layer.forward_batch(xs, sts); }, "same state is given twice");
  }
  {
    const Tensor bad = test::random_tensor({3, c.hidden_size + 1}, rng);
    const Tensor* xs[] = {&x, &bad};
    LayerState* sts[] = {&a, &b};
    expect_error([&] { layer.forward_batch(xs, sts); }, "chunk 1: expected shape");
  }
  {
    const Tensor bad = test::random_tensor({2, 3, c.hidden_size}, rng);  // a batch axis is not a chunk
    expect_error([&] { layer.forward(bad, a); }, "expected shape");
  }
  {
    const Tensor* xs[] = {&x, &x};
    LayerState* sts[] = {&a};
    expect_error([&] { layer.forward_batch(xs, sts); }, "2 inputs but 1 states");
  }
  {
    LayerState other = LayerState(c, LayerType::hca);
    expect_error([&] { layer.forward(x, other); }, "state was made for another layer");
  }
  EXPECT_EQ(a.position(), 0);  // a rejected call changes nothing
  EXPECT_EQ(b.position(), 0);
}

// A CSA state of an m = 2 config must not reach an m = 4 layer (its pending rows are too short).
TEST(StateBatch, StateOfAnotherConfigIsRejected) {
  std::mt19937 rng(6);
  const Config c = test::small_config();
  Config other = c;
  other.compress_rate_csa = 2;
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  LayerState st(other, LayerType::csa);
  EXPECT_THROW(layer.forward(test::random_tensor({3, c.hidden_size}, rng), st), Error);
}

// ---- clone, reset, bytes --------------------------------------------------------

TEST(StateLifecycle, CloneForksAPrefixIndependently) {
  std::mt19937 rng(11);
  for (LayerType type : kTypes) {
    const Config c = test::small_config();
    const Layer layer(c, type, test::random_weights(c, type, rng));
    const Tensor prefix = test::random_tensor({13, c.hidden_size}, rng, 2.0f);
    const Tensor a = test::random_tensor({9, c.hidden_size}, rng, 2.0f);
    const Tensor b = test::random_tensor({9, c.hidden_size}, rng, 2.0f);
    // Fork after the prefix; continue the original with a, the clone with b, interleaved.
    LayerState orig = layer.new_state();
    layer.forward(prefix, orig);
    LayerState fork = orig.clone();
    const Tensor ya1 = layer.forward(rows(a, 0, 4), orig);
    const Tensor yb1 = layer.forward(rows(b, 0, 6), fork);
    const Tensor ya2 = layer.forward(rows(a, 4, 5), orig);
    const Tensor yb2 = layer.forward(rows(b, 6, 3), fork);
    // Each equals a fresh run of its own sequence in the same chunks.
    for (const auto& [tail, split, y1, y2] : {std::tuple{&a, 4, &ya1, &ya2}, std::tuple{&b, 6, &yb1, &yb2}}) {
      LayerState fresh = layer.new_state();
      layer.forward(prefix, fresh);
      EXPECT_TRUE(same_bits(layer.forward(rows(*tail, 0, split), fresh), *y1)) << layer_type_name(type);
      EXPECT_TRUE(same_bits(layer.forward(rows(*tail, split, 9 - split), fresh), *y2)) << layer_type_name(type);
    }
    EXPECT_EQ(orig.position(), 22);
    EXPECT_EQ(fork.position(), 22);
  }
}

TEST(StateLifecycle, ResetEqualsFresh) {
  std::mt19937 rng(12);
  const std::filesystem::path dir = scratch_dir("ResetEqualsFresh");
  for (LayerType type : kTypes) {
    const Config c = test::small_config();
    const Layer layer(c, type, test::random_weights(c, type, rng));
    LayerState used = layer.new_state();
    layer.forward(test::random_tensor({21, c.hidden_size}, rng, 2.0f), used);  // mid-window, prev series held
    const size_t held = used.bytes();
    used.reset();
    EXPECT_EQ(used.position(), 0);
    EXPECT_EQ(used.bytes(), held);  // keeps its buffers for reuse
    LayerState fresh = layer.new_state();
    const Tensor x = test::random_tensor({11, c.hidden_size}, rng, 2.0f);
    EXPECT_TRUE(same_bits(feed(layer, x, {3, 1, 7}, used).y, feed(layer, x, {3, 1, 7}, fresh).y))
        << layer_type_name(type);
    // A reset state saves to the same bytes as a new one.
    LayerState r2 = used.clone(), n2 = layer.new_state();
    r2.reset();
    save_state(r2, c, dir / "reset.state");
    save_state(n2, c, dir / "new.state");
    auto slurp = [](const std::filesystem::path& p) {
      std::ifstream in(p, std::ios::binary);
      return std::string(std::istreambuf_iterator<char>(in), {});
    };
    EXPECT_EQ(slurp(dir / "reset.state"), slurp(dir / "new.state"));
  }
  std::filesystem::remove_all(dir);
}

TEST(StateLifecycle, BytesFollowTheDocumentedFormula) {
  std::mt19937 rng(13);
  for (int i = 0; i < 48; ++i) {
    const LayerType type = kTypes[i % 3];
    const Numerics nm = i < 30 ? Numerics::reference : Numerics::deployment;
    const Config c = random_config(rng, nm);
    const Layer layer(c, type, test::random_weights(c, type, rng), with(nm));
    LayerState st = layer.new_state();
    const int64_t d = c.head_dim, w = c.sliding_window, di = c.index_head_dim, r = c.qk_rope_head_dim;
    // Bytes of a stored window row / main entry and of an indexer key (state.h).
    const bool dep = nm == Numerics::deployment;
    const int64_t kv = dep ? ((d - r) + 2 * r + (d - r + 63) / 64 + 7) / 8 * 8 : 4 * d;
    const int64_t key = dep ? (di + 1) / 2 + (di + 31) / 32 : 4 * di;
    for (int64_t n : {0, 1, 3, 7, 20}) {
      layer.forward(test::random_tensor({n, c.hidden_size}, rng), st);
      const int64_t pos = st.position();
      // The formula of state.h, spelled out once more per type.
      int64_t bytes = (w - 1) * kv;
      if (type == LayerType::hca) bytes += 4 * 2 * c.compress_rate_hca * d + pos / c.compress_rate_hca * kv;
      if (type == LayerType::csa) {
        const int64_t m = c.compress_rate_csa;
        bytes += 4 * (2 * m * 2 * d + 2 * m * d) + pos / m * kv + 4 * (2 * m * 2 * di + 2 * m * di) + pos / m * key;
      }
      EXPECT_EQ(state_bytes(c, type, pos, nm), static_cast<size_t>(bytes));
      EXPECT_EQ(st.clone().bytes(), state_bytes(c, type, pos, nm)) << layer_type_name(type) << " at " << pos;
      EXPECT_GE(st.bytes(), state_bytes(c, type, pos, nm));
      EXPECT_LE(st.bytes(), 2 * state_bytes(c, type, pos, nm));
    }
  }
}

// The deployment state at V4 dims: 584 B per window row and main entry, 68 B per indexer key.
TEST(StateLifecycle, DeploymentRowsAtV4Dims) {
  const Config c = Config::preset("v4-flash");
  const Numerics dep = Numerics::deployment;
  for (LayerType t : kTypes) {
    const size_t fixed = state_bytes(c, t, 0, dep), ref_fixed = state_bytes(c, t, 0);
    EXPECT_EQ(ref_fixed - fixed, 127u * (512 * 4 - 584)) << layer_type_name(t);  // the window ring
  }
  EXPECT_EQ(state_bytes(c, LayerType::csa, 4096, dep) - state_bytes(c, LayerType::csa, 0, dep), 1024u * (584 + 68));
  EXPECT_EQ(state_bytes(c, LayerType::hca, 4096, dep) - state_bytes(c, LayerType::hca, 0, dep), 32u * 584);
  EXPECT_EQ(state_bytes(c, LayerType::csa, 4096) - state_bytes(c, LayerType::csa, 0), 1024u * (512 + 128) * 4);
}

// ---- save / load -----------------------------------------------------------------

class StateFile : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = scratch_dir(::testing::UnitTest::GetInstance()->current_test_info()->name()); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path file(const std::string& name) const { return dir_ / name; }
  static std::string read(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  static void write(const std::filesystem::path& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  // Loading must fail with a dsv4::Error that names the file and contains `needle`.
  static void expect_load_error(const Config& c, LayerType t, const std::filesystem::path& p,
                                const std::string& needle) {
    try {
      load_state(c, t, p);
      ADD_FAILURE() << "loaded; expected an error mentioning '" << needle << "'";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(p.string()), std::string::npos) << m;
      EXPECT_NE(m.find(needle), std::string::npos) << m;
    }
  }
  std::filesystem::path dir_;
};

// A file's checksum recomputed after editing its fields (to reach the checks behind it).
void fix_checksum(std::string& bytes) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i + 8 < bytes.size(); ++i) h = (h ^ static_cast<unsigned char>(bytes[i])) * 1099511628211ull;
  std::memcpy(&bytes[bytes.size() - 8], &h, 8);
}
constexpr size_t kHeader = 84, kPayloadField = 76;  // header bytes; offset of the payload length

// Step over byte offsets of a file: every one in the header and the trailer,
// every third in the payload (keeps the sanitizer run short).
size_t sampled(size_t at, size_t size) { return at < kHeader + 16 || at + 16 >= size ? 1 : 3; }

TEST_F(StateFile, SaveLoadContinueIsBitIdentical) {
  std::mt19937 rng(21);
  for (int i = 0; i < 18; ++i) {
    const LayerType type = kTypes[i % 3];
    const Numerics nm = i < 12 ? Numerics::reference : Numerics::deployment;
    const Config c = i % 12 < 3 ? test::small_config() : random_config(rng, nm);
    const Layer layer(c, type, test::random_weights(c, type, rng), with(nm));
    const int64_t r = std::max<int64_t>(c.compress_rate(type), 1), w = c.sliding_window;
    // Saved at: empty, inside the first window, mid-window with a CSA prev series, past W, on edges.
    for (int64_t p : {int64_t{0}, int64_t{1}, r - 1, r, r + 1, 2 * r + r / 2 + 1, w - 1, w + 3, 3 * w + r + 1}) {
      SCOPED_TRACE(std::string(layer_type_name(type)) + " case " + std::to_string(i) + " saved at " +
                   std::to_string(p));
      const Tensor x = test::random_tensor({p + 9, c.hidden_size}, rng, 2.0f);
      LayerState st = layer.new_state();
      feed(layer, rows(x, 0, p), {p}, st);
      if (type != LayerType::sliding) {
        EXPECT_EQ(st.compressor().pending, p % r);
      }
      save_state(st, c, file("s.state"));
      LayerState back = load_state(c, type, file("s.state"), nm);
      EXPECT_EQ(back.position(), p);
      EXPECT_EQ(back.numerics(), nm);
      EXPECT_EQ(back.bytes(), state_bytes(c, type, p, nm));
      const Tensor tail = rows(x, p, 9);
      EXPECT_TRUE(same_bits(feed(layer, tail, {2, 1, 6}, back).y, feed(layer, tail, {2, 1, 6}, st).y));
      // Saving what was loaded reproduces the file byte for byte.
      const std::string first = read(file("s.state"));
      LayerState again = load_state(c, type, file("s.state"), nm);
      save_state(again, c, file("t.state"));
      EXPECT_EQ(read(file("t.state")), first);
    }
  }
  // Nothing but the target is left in the folder (the temporary was renamed).
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) n += e.is_regular_file();
  EXPECT_EQ(n, 2);
}

TEST_F(StateFile, WrongConfigOrTypeIsRejected) {
  std::mt19937 rng(22);
  const Config c = test::small_config();
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  LayerState st = layer.new_state();
  layer.forward(test::random_tensor({10, c.hidden_size}, rng), st);
  save_state(st, c, file("csa.state"));

  Config other = c;
  other.head_dim = 16;
  expect_load_error(other, LayerType::csa, file("csa.state"), "saved for another config");
  expect_load_error(other, LayerType::csa, file("csa.state"), "head_dim 32 vs 16");
  other = c;
  other.rope_theta = 5000;  // same shapes, different numbers: still another layer
  expect_load_error(other, LayerType::csa, file("csa.state"), "other fields differ");
  expect_load_error(
      c, LayerType::hca, file("csa.state"),
      "saved from a compressed_sparse_attention layer, cannot restore into a heavily_compressed_attention");

  // Numerics: a deployment state is not a reference one, either way.
  const Layer dep(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng), LayerOptions{WeightFormat::f32, Numerics::deployment});
  LayerState ds = dep.new_state();
  dep.forward(test::random_tensor({10, c.hidden_size}, rng), ds);
  save_state(ds, c, file("dep.state"));
  expect_load_error(c, LayerType::csa, file("dep.state"),
                    "saved with deployment numerics, cannot restore into a layer with reference numerics");
  EXPECT_THROW(load_state(c, LayerType::csa, file("csa.state"), Numerics::deployment), Error);
  EXPECT_NO_THROW(load_state(c, LayerType::csa, file("dep.state"), Numerics::deployment));

  // Saving checks the state against the config and type it is saved for.
  Config wider = c;
  wider.index_head_dim = 24;
  EXPECT_THROW(save_state(st, wider, file("x.state")), Error);
  EXPECT_THROW(save_state(LayerState(), c, file("x.state")), Error);
  EXPECT_FALSE(std::filesystem::exists(file("x.state")));
  EXPECT_THROW(save_state(st, c, file("no/such/dir/x.state")), Error);
}

TEST_F(StateFile, EveryTruncationIsReported) {
  std::mt19937 rng(23);
  for (LayerType type : kTypes) {
    const Config c = test::small_config();
    const Layer layer(c, type, test::random_weights(c, type, rng));
    LayerState st = layer.new_state();
    layer.forward(test::random_tensor({11, c.hidden_size}, rng), st);
    save_state(st, c, file("s.state"));
    const std::string good = read(file("s.state"));
    for (size_t n = 0; n < good.size(); n += sampled(n, good.size())) {
      write(file("cut.state"), good.substr(0, n));
      SCOPED_TRACE(std::string(layer_type_name(type)) + " cut to " + std::to_string(n) + " of " +
                   std::to_string(good.size()));
      expect_load_error(c, type, file("cut.state"), "truncated");
    }
    write(file("long.state"), good + "x");
    expect_load_error(c, type, file("long.state"), "trailing data");
  }
}

TEST_F(StateFile, CorruptionIsReported) {
  std::mt19937 rng(24);
  const Config c = test::small_config();
  for (LayerType type : kTypes) {
    const Layer layer(c, type, test::random_weights(c, type, rng));
    LayerState st = layer.new_state();
    layer.forward(test::random_tensor({10, c.hidden_size}, rng), st);
    save_state(st, c, file("s.state"));
    const std::string good = read(file("s.state"));
    // Any flipped bit is an error, never a crash or a silently different state; beyond
    // the magic, version and length fields the checksum is what catches it.
    for (size_t i = 0; i < good.size(); i += sampled(i, good.size())) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ (1 << (i % 8)));
      write(file("bad.state"), bad);
      SCOPED_TRACE(std::string(layer_type_name(type)) + " flipped byte " + std::to_string(i));
      std::string needle = "checksum mismatch";
      if (i < 8)
        needle = "bad magic";
      else if (i < 12)
        needle = "unsupported format version";
      else if (i >= kPayloadField && i < kHeader)
        needle = "";  // too short or too long for its length field
      expect_load_error(c, type, file("bad.state"), needle);
    }
  }
}

TEST_F(StateFile, ForeignAndInconsistentFilesAreReported) {
  std::mt19937 rng(25);
  const Config c = test::small_config();
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  LayerState st = layer.new_state();
  layer.forward(test::random_tensor({10, c.hidden_size}, rng), st);
  save_state(st, c, file("s.state"));
  const std::string good = read(file("s.state"));

  expect_load_error(c, LayerType::csa, file("missing.state"), "cannot open");
  expect_load_error(c, LayerType::csa, dir_, "not a regular file");
  write(file("junk.state"), std::string(200, 'j'));
  expect_load_error(c, LayerType::csa, file("junk.state"), "bad magic");
  write(file("empty.state"), "");
  expect_load_error(c, LayerType::csa, file("empty.state"), "truncated");

  std::string v3 = good;
  v3[8] = 3;
  write(file("v3.state"), v3);
  expect_load_error(c, LayerType::csa, file("v3.state"), "unsupported format version 3");
  std::string v1 = good;  // files of the format before deployment numerics
  v1[8] = 1;
  write(file("v1.state"), v1);
  expect_load_error(c, LayerType::csa, file("v1.state"), "unsupported format version 1 (this build reads version 2)");

  // Fields edited with a valid checksum: the consistency checks, before any allocation.
  auto edited = [&](size_t at, int64_t v) {
    std::string b = good;
    std::memcpy(&b[at], &v, 8);
    fix_checksum(b);
    write(file("e.state"), b);
    return file("e.state");
  };
  const size_t pos_at = kHeader, comp_at = kHeader + 8 + 7 * 32 * 4;  // position; compressor after 7 window rows
  expect_load_error(c, LayerType::csa, edited(pos_at, -5), "inconsistent state: position -5");
  expect_load_error(c, LayerType::csa, edited(pos_at, 11), "inconsistent state");
  expect_load_error(c, LayerType::csa, edited(comp_at, 3), "compressor has 3 pending tokens at position 10");
  expect_load_error(c, LayerType::csa, edited(comp_at + 8, int64_t{1} << 60),
                    "compressor has 1152921504606846976 entries");
  expect_load_error(c, LayerType::csa, edited(comp_at + 16, 0), "series-A flag 0");
  {
    // A huge position whose derived counts are consistent: rejected by size, not by an allocation failure.
    std::string b = good;
    const int64_t big = (int64_t{1} << 62) + 2, pend = big % 4, ent = big / 4, one = 1;
    std::memcpy(&b[pos_at], &big, 8);
    std::memcpy(&b[comp_at], &pend, 8);
    std::memcpy(&b[comp_at + 8], &ent, 8);
    std::memcpy(&b[comp_at + 16], &one, 8);
    fix_checksum(b);
    write(file("big.state"), b);
    expect_load_error(c, LayerType::csa, file("big.state"), "payload is shorter than its fields say");
  }
}

}  // namespace
}  // namespace dsv4
