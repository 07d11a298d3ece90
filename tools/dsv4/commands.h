// Sub-commands of the dsv4 tool. Each file registers its own sub-command and
// options on the app; the callback stores the process exit code in `rc`.
#pragma once
#include <CLI/CLI.hpp>

namespace dsv4::cli {

void add_verify(CLI::App& app, int& rc);      // verify.cpp
void add_info(CLI::App& app, int& rc);        // info.cpp
void add_run(CLI::App& app, int& rc);         // run.cpp
void add_bench(CLI::App& app, int& rc);       // bench.cpp
void add_bench_serve(CLI::App& app, int& rc);  // bench_serve.cpp: bench-batch, bench-stack
void add_state_size(CLI::App& app, int& rc);  // state_size.cpp
void add_synth_model(CLI::App& app, int& rc);  // synth_model.cpp
void add_numerics_diff(CLI::App& app, int& rc);  // numerics_diff.cpp
void add_soak(CLI::App& app, int& rc);        // soak.cpp

}  // namespace dsv4::cli
