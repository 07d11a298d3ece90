// dsv4 verify FILE...: conformance files through the fast path.
#include <algorithm>
#include <cstdio>

#include "commands.h"
#include "dsv4/conformance.h"

namespace dsv4::cli {
namespace {

// One line per case; last line exactly "N passed, M failed". Returns M.
int verify(const std::vector<std::string>& files, bool verbose) {
  int passed = 0, failed = 0;
  double worst_abs = 0, worst_rel = 0;
  for (const std::string& f : files) {
    const CaseReport r = verify_case(f);
    (r.passed ? passed : failed)++;
    worst_abs = std::max(worst_abs, r.max_abs);
    worst_rel = std::max(worst_rel, r.max_rel);
    std::printf("%-4s %-48s max_abs %.3e  max_rel %.3e  (%lld values)\n", r.passed ? "ok" : "FAIL", r.name.c_str(),
                r.max_abs, r.max_rel, static_cast<long long>(r.compared));
    const size_t shown = verbose ? r.failures.size() : std::min<size_t>(r.failures.size(), 3);
    for (size_t i = 0; i < shown; ++i) std::printf("     %s\n", r.failures[i].c_str());
    if (shown < r.failures.size()) std::printf("     ... %zu more (use --verbose)\n", r.failures.size() - shown);
  }
  std::printf("suite: max_abs %.3e  max_rel %.3e (rel over |ref| >= 1e-3)\n", worst_abs, worst_rel);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed;
}

}  // namespace

void add_verify(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand(
      "verify", "Run conformance files through the fast path; compare every output (|ours-ref| <= 1e-5 + 1e-5|ref|) "
                "and the CSA top-k sets");
  auto files = std::make_shared<std::vector<std::string>>();
  auto verbose = std::make_shared<bool>(false);
  cmd->add_option("files", *files, "conformance .safetensors files")->required()->check(CLI::ExistingFile);
  cmd->add_flag("-v,--verbose", *verbose, "list every failed check");
  cmd->callback([&rc, files, verbose] { rc = verify(*files, *verbose) == 0 ? 0 : 1; });
}

}  // namespace dsv4::cli
