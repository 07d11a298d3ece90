// Saved decode states (format: docs/decode.md; header layout: state_format.h).
//
//   header   (state_format.h, 84 bytes)
//   payload  i64 position | window ring slots 0..min(pos, W-1)-1 (the valid ones) |
//            per compressor (HCA: main; CSA: main, indexer):
//              i64 pending, emitted, has_prev | pending C, Z rows | series-A C, Z+B if has_prev |
//              emitted entries
//   Window rows and entries are fp32 (reference numerics) or rows of the
//   deployment formats (state.h); pending and series-A rows are always fp32.
//   trailer  u64 FNV-1a 64 of header and payload
//
// Loading checks sizes against the file length and the checksum before it
// parses anything, and every count against the config before allocating.
#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "dsv4/atomic_file.h"
#include "dsv4/state.h"
#include "state/state_check.h"
#include "state/state_format.h"

namespace dsv4 {
namespace {

static_assert(std::endian::native == std::endian::little, "state files are little-endian; add byte swaps");

using namespace state_format;

constexpr const char* kDimNames[kDims] = {"head_dim", "sliding_window", "compress_rate_csa", "compress_rate_hca",
                                          "index_head_dim"};

// Builds messages by streaming (chains of "literal" + std::string trip GCC 12's false -Wrestrict).
template <class... A>
std::string cat(const A&... a) {
  std::ostringstream s;
  (s << ... << a);
  return s.str();
}

[[noreturn]] void bad_file(const std::filesystem::path& p, const std::string& what) {
  fail(cat("state file '", p.string(), "': ", what));
}

struct Header {
  char magic[8];
  uint32_t version, type, numerics;
  char fingerprint[kFingerprintLen];
  int64_t dims[kDims];
  uint64_t payload;
};

std::array<int64_t, kDims> dims_of(const Config& c) {
  return {c.head_dim, c.sliding_window, c.compress_rate_csa, c.compress_rate_hca, c.index_head_dim};
}

std::vector<const CompressorState*> compressors(const LayerState& s, LayerType t) {
  if (t == LayerType::csa) return {&s.compressor(), &s.indexer()};
  if (t == LayerType::hca) return {&s.compressor()};
  return {};
}

// Byte counts of the variable payload parts.
int64_t window_rows(const LayerState& s) { return std::min(s.position(), s.window_slots()); }
int64_t window_row_size(const LayerState& s) { return static_cast<int64_t>(s.window().row_bytes()); }
int64_t entry_size(const CompressorState& s) { return static_cast<int64_t>(s.entries.row_bytes()); }
int64_t compressor_bytes(const CompressorState& s, int64_t rate) {
  return 4 * (2 * s.pending * s.in_width + (s.has_prev ? 2 * rate * s.width : 0)) + s.emitted * entry_size(s);
}

// ---- writing ---------------------------------------------------------------

class Writer {
 public:
  explicit Writer(const std::filesystem::path& p) : f_(p, "save_state") {}
  void put(const void* data, size_t n) {
    hash_.add(data, n);
    f_.write(data, n);
  }
  template <class T>
  void put(const T& v) {
    put(&v, sizeof v);
  }
  template <class T>
  void items(const std::vector<T>& v, int64_t n) {
    put(v.data(), static_cast<size_t>(n) * sizeof(T));
  }
  void rows(const RowStore& s, int64_t n) { put(s.data(), static_cast<size_t>(n) * s.row_bytes()); }
  void finish() {
    f_.write(&hash_.h, sizeof hash_.h);
    f_.commit();
  }

 private:
  AtomicFile f_;  // beside the target, then renamed: a reader never sees a half-written file
  Fnv1a hash_;
};

// ---- reading ---------------------------------------------------------------

class Reader {
 public:
  Reader(const std::filesystem::path& p, std::ifstream& in, uint64_t bytes) : path_(p), in_(in), left_(bytes) {}
  void get(void* data, size_t n) {
    if (n > left_) short_payload();
    in_.read(static_cast<char*>(data), static_cast<std::streamsize>(n));
    if (!in_) bad_file(path_, "read error");
    left_ -= n;
  }
  int64_t i64() {
    int64_t v;
    get(&v, sizeof v);
    return v;
  }
  // rows × width items into v, zero-padded to `size` items; checked against
  // the bytes left before anything is allocated (rows comes from the file).
  template <class T>
  void items(std::vector<T>& v, int64_t rows, int64_t width, size_t size) {
    if (rows < 0 || (width > 0 && static_cast<uint64_t>(rows) > left_ / sizeof(T) / static_cast<uint64_t>(width)))
      short_payload();
    const size_t n = static_cast<size_t>(rows * width);
    v.assign(std::max(size, n), T{});
    get(v.data(), n * sizeof(T));
  }
  // n stored rows into s, zero-padded to `size` rows; checked like items().
  void rows(RowStore& s, int64_t n, int64_t size) {
    if (n < 0 || (s.row_bytes() > 0 && static_cast<uint64_t>(n) > left_ / s.row_bytes())) short_payload();
    s.assign(std::max(size, n));
    get(s.data(), static_cast<size_t>(n) * s.row_bytes());
  }
  uint64_t left() const { return left_; }

 private:
  [[noreturn]] void short_payload() const {
    bad_file(path_, "inconsistent state: the payload is shorter than its fields say");
  }
  const std::filesystem::path& path_;
  std::ifstream& in_;
  uint64_t left_;
};

void expect(const std::filesystem::path& p, bool ok, const std::string& what) {
  if (!ok) bad_file(p, cat("inconsistent state: ", what));
}

void read_compressor(Reader& r, const std::filesystem::path& p, const char* name, CompressorState& s, int64_t rate,
                     int64_t pos) {
  s.pending = r.i64();
  s.emitted = r.i64();
  const int64_t has_prev = r.i64();
  expect(p, s.pending == pos % rate, cat(name, " has ", s.pending, " pending tokens at position ", pos));
  expect(p, s.emitted == pos / rate, cat(name, " has ", s.emitted, " entries at position ", pos));
  expect(p, has_prev == static_cast<int64_t>(s.overlapping && s.emitted > 0), cat(name, " series-A flag ", has_prev));
  s.has_prev = has_prev != 0;
  const size_t pend = s.pend_c.size(), prev = s.prev_c.size();
  r.items(s.pend_c, s.pending, s.in_width, pend);
  r.items(s.pend_z, s.pending, s.in_width, pend);
  if (s.has_prev) {
    r.items(s.prev_c, rate, s.width, prev);
    r.items(s.prev_zb, rate, s.width, prev);
  }
  r.rows(s.entries, s.emitted, 0);
}

}  // namespace

void save_state(const LayerState& state, const Config& c, const std::filesystem::path& path) {
  c.validate();
  const LayerType t = state.type();
  if (!state.fits(c, t, state.numerics()))
    fail(cat("save_state: the state does not belong to a ", layer_type_name(t), " layer of this config (fingerprint ",
             c.fingerprint(), ")"));
  const int64_t rate = c.compress_rate(t);
  const auto comps = compressors(state, t);
  int64_t payload = 8 + window_rows(state) * window_row_size(state);
  for (const CompressorState* s : comps) payload += 24 + compressor_bytes(*s, rate);

  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.type = type_code(t);
  h.numerics = numerics_code(state.numerics());
  const std::string fp = c.fingerprint();
  std::memcpy(h.fingerprint, fp.data(), std::min(fp.size(), kFingerprintLen));
  const auto dims = dims_of(c);
  std::copy(dims.begin(), dims.end(), h.dims);
  h.payload = static_cast<uint64_t>(payload);

  {  // AtomicFile: written beside the target, synced, then renamed over it
    Writer w(path);
    w.put(h.magic, sizeof h.magic);
    w.put(h.version);
    w.put(h.type);
    w.put(h.numerics);
    w.put(h.fingerprint, sizeof h.fingerprint);
    w.put(h.dims, sizeof h.dims);
    w.put(h.payload);
    w.put(state.pos_);
    w.rows(state.window_, window_rows(state));
    for (const CompressorState* s : comps) {
      w.put(s->pending);
      w.put(s->emitted);
      w.put(static_cast<int64_t>(s->has_prev));
      w.items(s->pend_c, s->pending * s->in_width);
      w.items(s->pend_z, s->pending * s->in_width);
      if (s->has_prev) {
        w.items(s->prev_c, rate * s->width);
        w.items(s->prev_zb, rate * s->width);
      }
      w.rows(s->entries, s->emitted);
    }
    w.finish();
  }
}

LayerState load_state(const Config& c, LayerType t, const std::filesystem::path& path, Numerics n) {
  c.validate();  // the sizes below come from it
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) bad_file(path, "cannot open: no such file");
  if (!std::filesystem::is_regular_file(path, ec)) bad_file(path, "not a regular file");
  const uint64_t size = std::filesystem::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (ec || !in) bad_file(path, cat("cannot open: ", std::strerror(errno)));

  // Header: magic first (so a foreign file says so), then length checks.
  char raw[kHeaderBytes] = {};
  in.read(raw, static_cast<std::streamsize>(std::min<uint64_t>(size, kHeaderBytes)));
  if (size >= sizeof kMagic && std::memcmp(raw, kMagic, sizeof kMagic) != 0)
    bad_file(path, "bad magic (not a dsv4 state file)");
  if (size < kHeaderBytes) bad_file(path, cat("truncated: ", size, " bytes, the header alone is ", kHeaderBytes));
  Header h;
  std::memcpy(h.magic, raw, sizeof kMagic);
  std::memcpy(&h.version, raw + kVersionAt, 4);
  std::memcpy(&h.type, raw + kTypeAt, 4);
  std::memcpy(&h.numerics, raw + kNumericsAt, 4);
  std::memcpy(h.fingerprint, raw + kFingerprintAt, kFingerprintLen);
  std::memcpy(h.dims, raw + kDimsAt, sizeof h.dims);
  std::memcpy(&h.payload, raw + kPayloadAt, 8);
  if (h.version != kVersion)
    bad_file(path, cat("unsupported format version ", h.version, " (this build reads version ", kVersion, ")"));
  const uint64_t body = size - kHeaderBytes;  // payload + checksum
  if (body < 8 || h.payload > body - 8)
    bad_file(path, cat("truncated: ", size, " bytes, the header announces a ", h.payload,
                       "-byte payload (file: ", kHeaderBytes, " header + payload + 8 checksum)"));
  if (h.payload < body - 8)
    bad_file(path, cat("trailing data: ", size, " bytes, the header announces ", kHeaderBytes + h.payload + 8));

  // Checksum over header and payload, streamed.
  Fnv1a sum;
  sum.add(raw, kHeaderBytes);
  std::vector<char> buf(static_cast<size_t>(std::min<uint64_t>(h.payload, 1 << 20)));
  for (uint64_t left = h.payload; left > 0;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
    in.read(buf.data(), static_cast<std::streamsize>(n));
    if (!in) bad_file(path, "read error");
    sum.add(buf.data(), n);
    left -= n;
  }
  uint64_t stored = 0;
  in.read(reinterpret_cast<char*>(&stored), 8);
  if (!in) bad_file(path, "read error");
  if (stored != sum.h)
    bad_file(path, cat("checksum mismatch (stored ", std::hex, stored, ", computed ", sum.h, "): the file is corrupt"));

  // The layer it belongs to.
  if (h.type > 2) bad_file(path, cat("invalid layer type code ", h.type));
  const LayerType saved = h.type == 0 ? LayerType::sliding : h.type == 1 ? LayerType::csa : LayerType::hca;
  if (saved != t)
    bad_file(path, cat("saved from a ", layer_type_name(saved), " layer, cannot restore into a ", layer_type_name(t),
                       " layer"));
  if (h.numerics > 1) bad_file(path, cat("invalid numerics code ", h.numerics));
  const Numerics saved_n = h.numerics == 1 ? Numerics::deployment : Numerics::reference;
  if (saved_n != n)
    bad_file(path, cat("saved with ", numerics_name(saved_n), " numerics, cannot restore into a layer with ",
                       numerics_name(n), " numerics"));
  const std::string fp = c.fingerprint(), saved_fp(h.fingerprint, kFingerprintLen);
  if (saved_fp != fp) {
    std::string diff;
    const auto dims = dims_of(c);
    for (size_t i = 0; i < kDims; ++i)
      if (h.dims[i] != dims[i]) diff += cat(diff.empty() ? "" : ", ", kDimNames[i], " ", h.dims[i], " vs ", dims[i]);
    bad_file(path, cat("saved for another config (fingerprint ", saved_fp, ", this layer's is ", fp, "; ",
                       diff.empty() ? "state shapes agree, other fields differ" : diff, ")"));
  }

  // Payload: every count is checked against the config and the bytes left.
  LayerState s(c, t, n);
  const int64_t rate = c.compress_rate(t);
  in.seekg(static_cast<std::streamoff>(kHeaderBytes));
  Reader r(path, in, h.payload);
  s.pos_ = r.i64();
  if (s.pos_ < 0) bad_file(path, cat("inconsistent state: position ", s.pos_));
  r.rows(s.window_, std::min(s.pos_, s.window_slots_), s.window_slots_);
  if (t != LayerType::sliding) read_compressor(r, path, "compressor", s.comp_, rate, s.pos_);
  if (t == LayerType::csa) read_compressor(r, path, "indexer", s.index_, rate, s.pos_);
  if (r.left() != 0) bad_file(path, cat("inconsistent state: ", r.left(), " unread payload bytes"));
  check_state_finite(s, c, path);
  return s;
}

}  // namespace dsv4
