// dsv4 bench --packed (bench_packed.cpp): packed documents in one call against
// the same documents one by one.
#pragma once
#include <cstdint>
#include <string>

namespace dsv4::cli {

struct PackedBenchOptions {
  std::string preset = "v4-flash", layer_type = "csa", weights = "f32";
  int64_t docs = 64, doc_min = 128, doc_max = 8192;
  int64_t narrow = 1;  // V4's widths divided by this (the window, rates and top-k kept)
  int repeats = 3;
  bool backward = false, json = false;
  std::string only;  // "packed" or "separate": time that mode alone (profiling)
  uint64_t seed = 1;
};

// Exit code: 0, or 1 if packed and one by one were not bit-identical.
int run_packed_bench(const PackedBenchOptions& o);

}  // namespace dsv4::cli
