// Sub-commands of the dsv4 tool. Each file registers its own sub-command and
// options on the app; the callback stores the process exit code in `rc`.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace dsv4::cli {

// --layer: a negative index named plainly (CLI11's NonNegativeNumber prints its 1.8e308 bound).
inline CLI::Validator layer_index() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        return !s.empty() && s[0] == '-' ? s + " is negative; layers are numbered from 0" : "";
      },
      "INDEX");
}

// --json: stdout holds one JSON object; the human-readable report goes to stderr.
inline std::FILE* report_stream(bool json) { return json ? stderr : stdout; }

void add_verify(CLI::App& app, int& rc);         // verify.cpp
void add_info(CLI::App& app, int& rc);           // info.cpp
void add_run(CLI::App& app, int& rc);            // run.cpp
void add_bench(CLI::App& app, int& rc);          // bench.cpp
void add_bench_serve(CLI::App& app, int& rc);    // bench_serve.cpp: bench-batch, bench-stack
void add_state_size(CLI::App& app, int& rc);     // state_size.cpp
void add_synth_model(CLI::App& app, int& rc);    // synth_model.cpp
void add_numerics_diff(CLI::App& app, int& rc);  // numerics_diff.cpp
void add_soak(CLI::App& app, int& rc);           // soak.cpp

// --context-parallel (context.cpp): over MPI_COMM_WORLD; fails plainly in a build without MPI.
int verify_context_parallel(const std::vector<std::string>& files, const std::string& layout, bool verbose);
struct ContextBench {
  std::string preset, layer_type, weights, numerics, layout;
  int64_t seq = 0;
  int threads = 0, repeats = 1;
  uint64_t seed = 1;
  bool backward = false;  // forward_train + backward instead of the forward
};
int bench_context_parallel(const ContextBench& o);

}  // namespace dsv4::cli
