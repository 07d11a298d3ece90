// load_state must accept or reject any file with a dsv4::Error: no crash,
// leak, undefined behaviour or allocation the file's size does not justify.
// The input format (mode byte + file, header repairs) is state_fuzz_input.h;
// the seeds are real save_state outputs (fuzz/state_seeds.cpp).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include "dsv4/error.h"
#include "dsv4/state.h"
#include "state_fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const dsv4::Config config = dsv4::fuzz::state_fuzz_config();
  static const struct Scratch {  // one file per process, removed at exit
    std::string path = "/tmp/dsv4_fuzz_state_" + std::to_string(::getpid());
    ~Scratch() { std::remove(path.c_str()); }
  } scratch;
  const dsv4::fuzz::StateInput in = dsv4::fuzz::state_fuzz_input(data, size, config);
  std::ofstream(scratch.path, std::ios::binary | std::ios::trunc)
      .write(in.file.data(), static_cast<std::streamsize>(in.file.size()));
  try {
    const dsv4::LayerState s = dsv4::load_state(config, in.type, scratch.path, in.numerics);
    if (s.bytes() != dsv4::state_bytes(config, in.type, s.position(), in.numerics))
      __builtin_trap();  // state.h's promise
  } catch (const dsv4::Error&) {
  }
  return 0;
}
