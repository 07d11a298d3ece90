// dsv4: DeepSeek-V4 attention layers on CPU.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "dsv4/error.h"
#include "dsv4/version.h"
#include "dsv4_git_hash.h"  // generated at every build (cmake/git_hash.cmake)

int main(int argc, char** argv) {
  CLI::App app{"dsv4: DeepSeek-V4 attention layers (sliding window, CSA, HCA) on CPU"};
  app.set_version_flag("--version", [] {
    return "dsv4 " + dsv4::version() + " (git " DSV4_GIT_HASH ")\nisa:  " + dsv4::build_isa() +
           "\nblas: " + dsv4::blas_info();
  });
  app.require_subcommand(1);
  int rc = 0;
  dsv4::cli::add_verify(app, rc);
  dsv4::cli::add_info(app, rc);
  dsv4::cli::add_run(app, rc);
  dsv4::cli::add_bench(app, rc);
  dsv4::cli::add_bench_serve(app, rc);
  dsv4::cli::add_state_size(app, rc);
  dsv4::cli::add_synth_model(app, rc);
  dsv4::cli::add_numerics_diff(app, rc);
  dsv4::cli::add_soak(app, rc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {  // dsv4::Error and anything else: a message, never an abort
    std::fprintf(stderr, "dsv4: error: %s\n", e.what());
    return 2;
  }
  return rc;
}
