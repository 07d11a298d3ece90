// dsv4: DeepSeek-V4 attention layers on CPU.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"dsv4: DeepSeek-V4 attention layers (sliding window, CSA, HCA) on CPU"};
  app.require_subcommand(1);

  std::vector<std::string> files;
  bool verbose = false;
  CLI::App* verify = app.add_subcommand(
      "verify", "Run conformance files through the fast path and compare every output with the reference");
  verify->add_option("files", files, "conformance .safetensors files")->required()->check(CLI::ExistingFile);
  verify->add_flag("-v,--verbose", verbose, "list every failed check");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*verify) return dsv4::cli::verify(files, verbose) == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv4: %s\n", e.what());
    return 2;
  }
  return 0;
}
