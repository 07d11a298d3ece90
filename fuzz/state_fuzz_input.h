// The state fuzzer's input format, shared with its seed writer and the unit
// test that loads every seed (tests/state_seeds_test.cpp): a format change
// that the harness does not follow breaks that test instead of silently
// stopping every mutation at the header.
//
// Input = one mode byte, then the file. The mode picks the layer type (bits
// 5-6, mod 3) and the numerics (bit 7), and which header fields the harness
// repairs before writing the file: bit 0 magic + version, bit 1 type +
// numerics, bit 2 fingerprint, bit 3 payload length, bit 4 checksum. A
// checksummed format would otherwise stop nearly every mutation at the
// checksum, before the payload parser.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dsv4/config.h"
#include "state/state_format.h"

namespace dsv4::fuzz {

// Small dims (states stay small) with every compressor, valid in both numerics.
inline Config state_fuzz_config() {
  Config c;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.q_lora_rank = 8;
  c.o_groups = 1;
  c.o_lora_rank = 4;
  c.sliding_window = 4;
  c.compress_rate_csa = 2;
  c.compress_rate_hca = 4;
  c.index_n_heads = 2;
  c.index_head_dim = 4;
  c.index_topk = 2;
  return c;
}

constexpr uint8_t kRepairAll = 0x1f;

struct StateInput {
  LayerType type = LayerType::sliding;
  Numerics numerics = Numerics::reference;
  std::vector<char> file;
};

// Fuzzer bytes -> the layer asked for and the file to load (data[0] is the mode; size >= 1).
inline StateInput state_fuzz_input(const uint8_t* data, size_t size, const Config& c) {
  namespace sf = state_format;
  const unsigned mode = data[0];
  StateInput in;
  const uint32_t type = ((mode >> 5) & 3) % 3, numerics = mode >> 7;
  in.type = type == 0 ? LayerType::sliding : type == 1 ? LayerType::csa : LayerType::hca;
  in.numerics = numerics ? Numerics::deployment : Numerics::reference;
  in.file.assign(reinterpret_cast<const char*>(data) + 1, reinterpret_cast<const char*>(data) + size);
  std::vector<char>& f = in.file;
  if (f.size() < sf::kHeaderBytes + sf::kChecksumBytes) return in;
  const uint64_t payload = f.size() - sf::kHeaderBytes - sf::kChecksumBytes;
  if (mode & 1)
    std::memcpy(f.data(), sf::kMagic, sizeof sf::kMagic), std::memcpy(f.data() + sf::kVersionAt, &sf::kVersion, 4);
  if (mode & 2) std::memcpy(f.data() + sf::kTypeAt, &type, 4), std::memcpy(f.data() + sf::kNumericsAt, &numerics, 4);
  if (mode & 4) std::memcpy(f.data() + sf::kFingerprintAt, c.fingerprint().data(), sf::kFingerprintLen);
  if (mode & 8) std::memcpy(f.data() + sf::kPayloadAt, &payload, 8);
  if (mode & 16) {
    sf::Fnv1a sum;
    sum.add(f.data(), f.size() - sf::kChecksumBytes);
    std::memcpy(f.data() + f.size() - sf::kChecksumBytes, &sum.h, 8);
  }
  return in;
}

// A saved state file -> fuzzer input asking for every repair (which leaves a valid file unchanged).
inline std::vector<uint8_t> state_fuzz_seed(LayerType t, Numerics n, const std::vector<char>& file) {
  std::vector<uint8_t> out(file.size() + 1);
  out[0] = static_cast<uint8_t>(kRepairAll | state_format::type_code(t) << 5 | state_format::numerics_code(n) << 7);
  if (!file.empty()) std::memcpy(out.data() + 1, file.data(), file.size());
  return out;
}

}  // namespace dsv4::fuzz
