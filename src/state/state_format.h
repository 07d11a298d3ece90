// The saved-state file layout (docs/decode.md), shared by save_state /
// load_state and the fuzzer (fuzz/state_fuzz_input.h), so that a format change
// reaches both. Little-endian:
//
//   header   "DSV4STAT" | u32 version | u32 layer type | u32 numerics (0 reference, 1 deployment) |
//            char[16] config fingerprint | i64 D, W, m, m', D_I (for readable mismatch messages) |
//            u64 payload bytes
//   payload  (state_io.cpp)
//   trailer  u64 FNV-1a 64 of header and payload
#pragma once
#include <cstddef>
#include <cstdint>

#include "dsv4/config.h"

namespace dsv4::state_format {

constexpr char kMagic[8] = {'D', 'S', 'V', '4', 'S', 'T', 'A', 'T'};
constexpr uint32_t kVersion = 2;  // 1: before deployment numerics (no numerics field)
constexpr size_t kFingerprintLen = 16;
constexpr size_t kDims = 5;

// Byte offsets of the header fields.
constexpr size_t kVersionAt = sizeof kMagic;
constexpr size_t kTypeAt = kVersionAt + 4;
constexpr size_t kNumericsAt = kTypeAt + 4;
constexpr size_t kFingerprintAt = kNumericsAt + 4;
constexpr size_t kDimsAt = kFingerprintAt + kFingerprintLen;
constexpr size_t kPayloadAt = kDimsAt + 8 * kDims;
constexpr size_t kHeaderBytes = kPayloadAt + 8;
constexpr size_t kChecksumBytes = 8;
static_assert(kHeaderBytes == 84, "docs/decode.md documents an 84-byte header");

constexpr uint32_t type_code(LayerType t) { return t == LayerType::sliding ? 0 : t == LayerType::csa ? 1 : 2; }
constexpr uint32_t numerics_code(Numerics n) { return n == Numerics::deployment ? 1 : 0; }

struct Fnv1a {
  uint64_t h = 14695981039346656037ull;
  void add(const void* data, size_t n) {
    const auto* b = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
};

}  // namespace dsv4::state_format
