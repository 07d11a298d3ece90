// load_state's last check: every value a state holds is finite. A NaN or Inf
// in a saved row (a bad writer, a flipped bit with the checksum repaired)
// would otherwise load and turn the next forward's output non-finite with no
// error. Deployment rows are checked as the formats define them (an E4M3 NaN
// code, an E8M0 NaN scale, a bf16 Inf/NaN) and after decoding (a scale large
// enough to overflow a code).
#include "state/state_check.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "ops/quant.h"

namespace dsv4 {
namespace {

template <class... A>
[[noreturn]] void bad(const std::filesystem::path& p, const A&... a) {
  std::ostringstream s;
  s << "state file '" << p.string() << "': non-finite value in ";
  (s << ... << a);
  fail(s.str());
}

// Rows [0, rows) of width `width` in v; `what(row)` names a row in messages.
template <class Name>
void check_rows(const std::filesystem::path& p, const float* v, int64_t rows, int64_t width, Name what) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i)
      if (const float x = v[r * width + i]; !std::isfinite(x)) bad(p, what(r), ": channel ", i, " is ", x);
}

// A kv row (window row or main entry): (D-R) E4M3 codes | R bf16 | scale bytes.
template <class Name>
void check_kv_row(const std::filesystem::path& p, const uint8_t* row, int64_t d, int64_t r, std::vector<float>& out,
                  const Name& what) {
  const int64_t nope = d - r;
  for (int64_t i = 0; i < nope; ++i)
    if ((row[i] & 0x7f) == 0x7f) bad(p, what(), ": channel ", i, " has the E4M3 NaN code");
  for (int64_t i = 0; i < r; ++i) {
    uint16_t h;
    std::memcpy(&h, row + nope + 2 * i, 2);
    if ((h & 0x7f80) == 0x7f80) bad(p, what(), ": channel ", nope + i, " is a bf16 ", h & 0x7f ? "NaN" : "Inf");
  }
  for (int64_t b = 0; b * quant::kFp8Block < nope; ++b)
    if (row[nope + 2 * r + b] == 0xff) bad(p, what(), ": the scale of FP8 block ", b, " is the E8M0 NaN code");
  quant::kv_row_decode(row, d, r, out.data());
  for (int64_t i = 0; i < d; ++i)
    if (!std::isfinite(out[static_cast<size_t>(i)])) bad(p, what(), ": channel ", i, " decodes to ", out[i]);
}

// An indexer key: E2M1 codes (always finite) | scale bytes.
template <class Name>
void check_index_row(const std::filesystem::path& p, const uint8_t* row, int64_t n, std::vector<float>& out,
                     const Name& what) {
  for (int64_t b = 0; b * quant::kFp4Block < n; ++b)
    if (row[(n + 1) / 2 + b] == 0xff) bad(p, what(), ": the scale of FP4 block ", b, " is the E8M0 NaN code");
  quant::index_row_decode(row, n, out.data());
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(out[static_cast<size_t>(i)])) bad(p, what(), ": channel ", i, " decodes to ", out[i]);
}

// Rows [0, n) of a store in its format: fp32 values, or the encoded rows as stored and decoded.
template <class Name>
void check_store(const std::filesystem::path& p, const RowStore& st, int64_t n, Name what) {
  if (st.format() == RowStore::Format::f32)
    return check_rows(p, reinterpret_cast<const float*>(st.data()), n, st.width(), what);
  std::vector<float> out(static_cast<size_t>(st.width()));
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* row = st.data() + static_cast<size_t>(r) * st.row_bytes();
    if (st.format() == RowStore::Format::key_fp4)
      check_index_row(p, row, st.width(), out, [&] { return what(r); });
    else
      check_kv_row(p, row, st.width(), st.rope_dims(), out, [&] { return what(r); });
  }
}

// The main compressor (entries are kv rows) or the CSA indexer's (keys are index rows).
void check_compressor(const std::filesystem::path& p, const CompressorState& s, bool indexer, int64_t rate,
                      int64_t pos) {
  const std::string name = indexer ? "indexer" : "compressor";
  auto row_of = [&](const std::string& part, int64_t first) {
    return
        [&name, part, first](int64_t r) { return name + " " + part + " row of position " + std::to_string(first + r); };
  };
  check_rows(p, s.pend_c.data(), s.pending, s.in_width, row_of("pending C", pos - s.pending));
  check_rows(p, s.pend_z.data(), s.pending, s.in_width, row_of("pending Z", pos - s.pending));
  if (s.has_prev) {
    check_rows(p, s.prev_c.data(), rate, s.width, row_of("series-A C", (s.emitted - 1) * rate));
    check_rows(p, s.prev_zb.data(), rate, s.width, row_of("series-A Z+B", (s.emitted - 1) * rate));
  }
  check_store(p, s.entries, s.emitted, [&](int64_t e) {
    return name + (indexer ? " key " : " entry ") + std::to_string(e) + " (tokens " + std::to_string(e * rate) + ".." +
           std::to_string(e * rate + rate - 1) + ")";
  });
}

}  // namespace

void check_state_finite(const LayerState& s, const Config& c, const std::filesystem::path& path) {
  const int64_t slots = s.window_slots(), held = std::min(s.position(), slots);
  // Ring slot k holds the one position p in [pos - held, pos) with p % slots == k.
  check_store(path, s.window(), held, [&](int64_t k) {
    const int64_t first = s.position() - held, p = first + ((k - first % slots) % slots + slots) % slots;
    return "window row of position " + std::to_string(p) + " (ring slot " + std::to_string(k) + ")";
  });
  if (s.type() == LayerType::sliding) return;
  const int64_t rate = c.compress_rate(s.type());
  check_compressor(path, s.compressor(), false, rate, s.position());
  if (s.type() == LayerType::csa) check_compressor(path, s.indexer(), true, rate, s.position());
}

}  // namespace dsv4
