// Seeds for the state fuzzer: real save_state files (every layer type, both
// numerics, empty to past the window with entries and a CSA series-A half
// held), from seeded random layers at state_fuzz_config()'s dims.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace dsv4::fuzz {

struct StateSeed {
  std::string name;            // e.g. "csa_deployment_pos13"
  std::vector<uint8_t> input;  // fuzzer input: mode byte + file (state_fuzz_input.h)
};

// `scratch`: a folder for the temporary state files.
std::vector<StateSeed> state_seeds(const std::filesystem::path& scratch);

}  // namespace dsv4::fuzz
