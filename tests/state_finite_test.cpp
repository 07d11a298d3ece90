// load_state refuses a state holding a NaN or Inf, naming the row and channel:
// each kind of row of a saved state (window, pending and series-A rows,
// entries, indexer keys; deployment rows as coded and as decoded) is
// corrupted at its documented offset (docs/decode.md), the checksum repaired.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include "dsv4/layer.h"
#include "dsv4/state.h"
#include "ops/quant.h"
#include "state/state_format.h"
#include "test_util.h"

namespace dsv4 {
namespace {

using ::testing::HasSubstr;

std::vector<char> read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Byte offsets of the payload parts of a saved state (docs/decode.md).
struct Layout {
  size_t window = 0, window_row = 0;
  struct Comp {
    size_t pend_c = 0, pend_z = 0, prev_c = 0, prev_zb = 0, entries = 0, pend_row = 0, prev_row = 0, entry_row = 0;
  } comp[2];
};

Layout layout_of(const LayerState& s, int64_t rate) {
  Layout l;
  l.window = state_format::kHeaderBytes + 8;
  l.window_row = s.window().row_bytes();
  size_t at = l.window + static_cast<size_t>(std::min(s.position(), s.window_slots())) * l.window_row;
  const CompressorState* cs[2] = {&s.compressor(), &s.indexer()};
  for (int i = 0; i < 2; ++i) {
    const CompressorState& c = *cs[i];
    Layout::Comp& o = l.comp[i];
    o.pend_row = static_cast<size_t>(c.in_width) * 4;
    o.prev_row = static_cast<size_t>(c.width) * 4;
    o.entry_row = c.entries.row_bytes();
    at += 24;
    o.pend_c = at;
    o.pend_z = o.pend_c + static_cast<size_t>(c.pending) * o.pend_row;
    o.prev_c = o.pend_z + static_cast<size_t>(c.pending) * o.pend_row;
    o.prev_zb = o.prev_c + (c.has_prev ? static_cast<size_t>(rate) * o.prev_row : 0);
    o.entries = o.prev_zb + (c.has_prev ? static_cast<size_t>(rate) * o.prev_row : 0);
    at = o.entries + static_cast<size_t>(c.emitted) * o.entry_row;
  }
  return l;
}

class StateFinite : public ::testing::Test {
 protected:
  // A state after 21 tokens: wrapped window ring (W = 8), CSA: 5 entries, 1 pending,
  // series A held; HCA: 2 entries, 5 pending.
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("dsv4_finite_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void save(LayerType t, Numerics n) {
    std::mt19937 rng(5);
    type_ = t, numerics_ = n;
    const Layer layer(c_, t, test::random_weights(c_, t, rng), LayerOptions{WeightFormat::f32, n});
    LayerState s = layer.new_state();
    layer.forward(test::random_tensor({21, c_.hidden_size}, rng), s);
    file_ = dir_ / "s.state";
    save_state(s, c_, file_);
    bytes_ = read_file(file_);
    layout_ = layout_of(s, c_.compress_rate(t));
    ASSERT_NO_THROW(load_state(c_, t, file_, n));
  }
  // Writes value bytes at `at` into a copy of the saved file (checksum repaired); load_state's message.
  template <class T>
  std::string load_with(size_t at, T value) {
    std::vector<char> b = bytes_;
    EXPECT_LE(at + sizeof value, b.size() - 8);
    std::memcpy(b.data() + at, &value, sizeof value);
    state_format::Fnv1a sum;
    sum.add(b.data(), b.size() - 8);
    std::memcpy(b.data() + b.size() - 8, &sum.h, 8);
    std::ofstream(file_, std::ios::binary | std::ios::trunc).write(b.data(), static_cast<std::streamsize>(b.size()));
    try {
      load_state(c_, type_, file_, numerics_);
    } catch (const Error& e) {
      return e.what();
    }
    return "(loaded)";
  }

  const Config c_ = test::small_config();
  std::filesystem::path dir_, file_;
  std::vector<char> bytes_;
  Layout layout_;
  LayerType type_ = LayerType::sliding;
  Numerics numerics_ = Numerics::reference;
};

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN(), kInf = std::numeric_limits<float>::infinity();

TEST_F(StateFinite, ReferenceRowsOfEveryKind) {
  save(LayerType::csa, Numerics::reference);
  const Layout& l = layout_;
  // Position 21, ring of 7 slots: slot 2 holds position 16 (16 % 7 == 2).
  EXPECT_THAT(load_with(l.window + 2 * l.window_row + 4 * 5, kNaN),
              HasSubstr("non-finite value in window row of position 16 (ring slot 2): channel 5 is nan"));
  EXPECT_THAT(load_with(l.window, -kInf), HasSubstr("window row of position 14 (ring slot 0): channel 0 is -inf"));
  EXPECT_THAT(load_with(l.comp[0].pend_c + 4 * 3, kInf),
              HasSubstr("compressor pending C row of position 20: channel 3 is inf"));
  EXPECT_THAT(load_with(l.comp[0].pend_z, kNaN), HasSubstr("compressor pending Z row of position 20: channel 0"));
  EXPECT_THAT(load_with(l.comp[0].prev_c + l.comp[0].prev_row, kNaN),
              HasSubstr("compressor series-A C row of position 17"));
  EXPECT_THAT(load_with(l.comp[0].prev_zb, kInf), HasSubstr("compressor series-A Z+B row of position 16"));
  EXPECT_THAT(load_with(l.comp[0].entries + 3 * l.comp[0].entry_row + 4, kNaN),
              HasSubstr("compressor entry 3 (tokens 12..15): channel 1 is nan"));
  EXPECT_THAT(load_with(l.comp[1].pend_z + 4 * 7, kNaN), HasSubstr("indexer pending Z row of position 20: channel 7"));
  EXPECT_THAT(load_with(l.comp[1].prev_c, kNaN), HasSubstr("indexer series-A C row of position 16"));
  EXPECT_THAT(load_with(l.comp[1].entries + 4 * l.comp[1].entry_row + 4 * 2, kInf),
              HasSubstr("indexer key 4 (tokens 16..19): channel 2 is inf"));
  EXPECT_THAT(load_with(l.comp[1].entries, 1.0f), HasSubstr("(loaded)"));  // finite values still load
}

TEST_F(StateFinite, HcaEntriesAndPending) {
  save(LayerType::hca, Numerics::reference);
  EXPECT_THAT(load_with(layout_.comp[0].pend_c + layout_.comp[0].pend_row * 4, kNaN),
              HasSubstr("compressor pending C row of position 20"));
  EXPECT_THAT(load_with(layout_.comp[0].entries + layout_.comp[0].entry_row, kInf),
              HasSubstr("compressor entry 1 (tokens 8..15): channel 0 is inf"));
}

TEST_F(StateFinite, DeploymentRowsAsCodedAndDecoded) {
  save(LayerType::csa, Numerics::deployment);
  const Layout& l = layout_;
  const int64_t d = c_.head_dim, r = c_.qk_rope_head_dim, nope = d - r;
  const size_t row = l.window + 3 * l.window_row, scale = static_cast<size_t>(nope + 2 * r);
  EXPECT_THAT(load_with(row + 7, uint8_t{0x7f}),
              HasSubstr("window row of position 17 (ring slot 3): channel 7 has the E4M3 NaN code"));
  EXPECT_THAT(load_with(row + 9, uint8_t{0xff}), HasSubstr("channel 9 has the E4M3 NaN code"));
  EXPECT_THAT(load_with(row + nope + 2 * 3, uint16_t{0x7f80}), HasSubstr("channel 27 is a bf16 Inf"));
  EXPECT_THAT(load_with(row + nope, uint16_t{0xffc1}), HasSubstr("channel 24 is a bf16 NaN"));
  EXPECT_THAT(load_with(row + scale, uint8_t{0xff}), HasSubstr("the scale of FP8 block 0 is the E8M0 NaN code"));
  // The largest scale times the largest code overflows fp32: valid codes, an infinite value.
  const std::vector<char> clean = bytes_;
  const size_t entry = l.comp[0].entries + 2 * l.comp[0].entry_row;
  std::fill_n(bytes_.begin() + static_cast<std::ptrdiff_t>(entry), nope, char{0});
  bytes_[entry + scale] = static_cast<char>(0xfe);  // 2^127
  EXPECT_THAT(load_with(entry + 4, uint8_t{0x7e}),  // 448
              HasSubstr("compressor entry 2 (tokens 8..11): channel 4 decodes to inf"));
  bytes_ = clean;
  const size_t key = l.comp[1].entries + l.comp[1].entry_row, key_scale = static_cast<size_t>(c_.index_head_dim / 2);
  EXPECT_THAT(load_with(key + key_scale, uint8_t{0xff}),
              HasSubstr("indexer key 1 (tokens 4..7): the scale of FP4 block 0 is the E8M0 NaN code"));
  EXPECT_THAT(load_with(l.comp[1].pend_c, kNaN), HasSubstr("indexer pending C row of position 20: channel 0"));
}

}  // namespace
}  // namespace dsv4
