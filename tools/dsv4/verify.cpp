// dsv4 verify FILE...: conformance files through the fast path.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "dsv4/conformance.h"
#include "dsv4/error.h"

namespace dsv4::cli {
namespace {

// One line per case; last line exactly "N passed, M failed" (--json: on stderr,
// and stdout holds one JSON object). Returns M.
int verify(const std::vector<std::string>& files, bool verbose, bool json) {
  std::FILE* out = report_stream(json);
  int passed = 0, failed = 0;
  double worst_abs = 0, worst_rel = 0;
  nlohmann::json cases = nlohmann::json::array();
  for (const std::string& f : files) {
    const CaseReport r = verify_case(f);
    (r.passed ? passed : failed)++;
    worst_abs = std::max(worst_abs, r.max_abs);
    worst_rel = std::max(worst_rel, r.max_rel);
    cases.push_back({{"file", f},
                     {"name", r.name},
                     {"passed", r.passed},
                     {"max_abs", r.max_abs},
                     {"max_rel", r.max_rel},
                     {"compared", r.compared},
                     {"failures", r.failures}});
    std::fprintf(out, "%-4s %-48s max_abs %.3e  max_rel %.3e  (%lld values)\n", r.passed ? "ok" : "FAIL",
                 r.name.c_str(), r.max_abs, r.max_rel, static_cast<long long>(r.compared));
    const size_t shown = verbose ? r.failures.size() : std::min<size_t>(r.failures.size(), 3);
    for (size_t i = 0; i < shown; ++i) std::fprintf(out, "     %s\n", r.failures[i].c_str());
    if (shown < r.failures.size()) std::fprintf(out, "     ... %zu more (use --verbose)\n", r.failures.size() - shown);
  }
  std::fprintf(out, "suite: max_abs %.3e  max_rel %.3e (rel over |ref| >= 1e-3)\n", worst_abs, worst_rel);
  std::fprintf(out, "%d passed, %d failed\n", passed, failed);
  if (json)
    std::printf(
        "%s\n",
        nlohmann::json{
            {"passed", passed}, {"failed", failed}, {"max_abs", worst_abs}, {"max_rel", worst_rel}, {"cases", cases}}
            .dump()
            .c_str());
  return failed;
}

}  // namespace

void add_verify(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand(
      "verify",
      "Run conformance files through the fast path; compare every output (|ours-ref| <= 1e-5 + 1e-5|ref|) "
      "and the CSA top-k sets");
  auto files = std::make_shared<std::vector<std::string>>();
  auto verbose = std::make_shared<bool>(false), json = std::make_shared<bool>(false);
  auto context = std::make_shared<bool>(false);
  auto layout = std::make_shared<std::string>("zigzag");
  cmd->add_option("files", *files, "conformance .safetensors files")->required()->check(CLI::ExistingFile);
  cmd->add_flag("-v,--verbose", *verbose, "list every failed check");
  cmd->add_flag("--json", *json, "stdout: one JSON object with every case (the report goes to stderr)");
  cmd->add_flag("--context-parallel", *context,
                "under mpirun: each case's sequence (its chunks concatenated) split over the ranks, outputs "
                "compared (docs/distributed.md); rank 0 reports");
  cmd->add_option("--layout", *layout, "--context-parallel: zigzag or contiguous blocks")
      ->check(CLI::IsMember({"zigzag", "contiguous"}))
      ->capture_default_str();
  cmd->callback([&rc, files, verbose, json, context, layout] {
    if (*context && *json) fail("verify: --json is not offered with --context-parallel");
    const int failed = *context ? verify_context_parallel(*files, *layout, *verbose) : verify(*files, *verbose, *json);
    rc = failed == 0 ? 0 : 1;
  });
}

}  // namespace dsv4::cli
