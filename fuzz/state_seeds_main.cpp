// dsv4_state_seeds DIR: writes the state fuzzer's seeds (state_seeds.h) into DIR.
#include <cstdio>
#include <exception>
#include <fstream>

#include "state_seeds.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    const auto seeds = dsv4::fuzz::state_seeds(dir);
    for (const auto& s : seeds)
      std::ofstream(dir / s.name, std::ios::binary)
          .write(reinterpret_cast<const char*>(s.input.data()), static_cast<std::streamsize>(s.input.size()));
    std::printf("%zu state seeds in %s\n", seeds.size(), dir.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv4_state_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
