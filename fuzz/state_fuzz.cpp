// load_state must accept or reject any file with a dsv4::Error: no crash,
// leak, undefined behaviour or allocation the file's size does not justify.
// The first input byte picks the layer type and which header fields the
// harness repairs before writing the rest as the file: magic + version, type,
// fingerprint, payload length, checksum. A checksummed format would otherwise
// stop nearly every mutation at the checksum, before the payload parser.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "dsv4/error.h"
#include "dsv4/state.h"

namespace {

constexpr size_t kHeader = 8 + 4 + 4 + 16 + 5 * 8 + 8;  // docs/decode.md

dsv4::Config tiny_config() {  // small dims: states stay small, every compressor exists
  dsv4::Config c;
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

uint64_t fnv1a(const std::vector<char>& b, size_t n) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(b[i])) * 1099511628211ull;
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const dsv4::Config config = tiny_config();
  static const std::string fingerprint = config.fingerprint();
  static const struct Scratch {  // one file per process, removed at exit
    std::string path = "/tmp/dsv4_fuzz_state_" + std::to_string(::getpid());
    ~Scratch() { std::remove(path.c_str()); }
  } scratch;
  const std::string& path = scratch.path;
  const unsigned mode = data[0];
  const uint32_t type = (mode >> 5) % 3;
  std::vector<char> f(reinterpret_cast<const char*>(data) + 1, reinterpret_cast<const char*>(data) + size);
  if (f.size() >= kHeader + 8) {
    const uint32_t version = 1;
    const uint64_t payload = f.size() - kHeader - 8;
    if (mode & 1) std::memcpy(f.data(), "DSV4STAT", 8), std::memcpy(f.data() + 8, &version, 4);
    if (mode & 2) std::memcpy(f.data() + 12, &type, 4);
    if (mode & 4) std::memcpy(f.data() + 16, fingerprint.data(), 16);
    if (mode & 8) std::memcpy(f.data() + kHeader - 8, &payload, 8);
    if (mode & 16) {
      const uint64_t sum = fnv1a(f, f.size() - 8);
      std::memcpy(f.data() + f.size() - 8, &sum, 8);
    }
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(f.data(), static_cast<std::streamsize>(f.size()));
  const dsv4::LayerType t = type == 0 ? dsv4::LayerType::sliding : type == 1 ? dsv4::LayerType::csa : dsv4::LayerType::hca;
  try {
    const dsv4::LayerState s = dsv4::load_state(config, t, path);
    if (s.bytes() != dsv4::state_bytes(config, t, s.position())) __builtin_trap();  // state.h's promise
  } catch (const dsv4::Error&) {
  }
  return 0;
}
