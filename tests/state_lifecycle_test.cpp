// Decode state: clone, reset, bytes, and save/load (round trip and every kind
// of bad file).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <tuple>

#include "dsv4/layer.h"
#include "dsv4/state.h"
#include "reference.h"
#include "state_util.h"
#include "test_util.h"

namespace dsv4 {
namespace {

using namespace state_test;

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
  const Layer dep(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng),
                  LayerOptions{WeightFormat::f32, Numerics::deployment});
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
