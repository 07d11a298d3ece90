// A CI-sized `dsv4 soak` (the long one: `dsv4 soak`, 100,000 tokens per layer
// type; numbers in docs/decode.md): every layer type, both numerics, 10,000
// tokens one at a time with a save/load every 2,500. Its summary lines are
// parsed and their numbers checked here too; and a slack below zero must fail.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <regex>

#include "test_util.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;  // soak.cpp: no memory figure means anything under ASan
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

std::string run_soak(const std::string& args, int& status) {
  const fs::path log = fs::temp_directory_path() / ("dsv4_soak_test_" + std::to_string(::getpid()) + ".log");
  std::string cmd = "'";  // built with += : chains of + trip GCC 12's false -Wrestrict
  cmd += test::dsv4_binary().string();
  cmd += "' soak ";
  cmd += args;
  status = test::sh(cmd, log);
  std::string out = test::slurp(log);
  fs::remove(log);
  return out;
}

TEST(Soak, ShortSoakOfEveryLayerTypeAndNumerics) {
  for (const char* numerics : {"reference", "deployment"}) {
    int status = 0;
    const int tokens = kAsan ? 4000 : 10000;  // ASan: the memory is not measured, the rest takes 3x longer
    std::string args = "--tokens " + std::to_string(tokens) + " --checkpoint " + std::to_string(tokens / 4);
    args += std::string(" --sample 250 --threads 1 --numerics ") + numerics;
    const std::string out = run_soak(args, status);
    EXPECT_EQ(status, 0) << out;
    const std::regex line(R"(soak (\w+): \d+ tokens .*state ([\d.]+) -> ([\d.]+) MB \(tight ([\d.]+) MB\).*)"
                          R"(first checkpoint: (RSS (-?[\d.]+) MB, heap (-?[\d.]+) MB|not measured.*); )"
                          R"((\d+) of 3 checkpoints continued bit for bit; ok)");
    int types = 0;
    for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it, ++types) {
      const std::smatch& m = *it;
      SCOPED_TRACE(std::string(numerics) + " " + m[1].str());
      EXPECT_LE(std::stod(m[3]), 2 * std::stod(m[4]) + 0.001);  // bytes() within 2x of the tight size
      EXPECT_EQ(m[8].str(), "3");                               // at 1/4, 2/4, 3/4
      if (kAsan) continue;
      EXPECT_LE(std::stod(m[6]), 4.0);  // RSS follows the state
      EXPECT_LE(std::stod(m[7]), 1.0);  // so do the heap's bytes in use
    }
    EXPECT_EQ(types, 3) << out;
  }
  if (kAsan) GTEST_SKIP() << "memory checked only outside AddressSanitizer (its quarantine holds freed blocks)";
}

TEST(Soak, FailsWhenMemoryGrowsPastTheSlack) {
  if (kAsan) GTEST_SKIP() << "memory is not measured under AddressSanitizer";
  int status = 0;
  const std::string out =
      run_soak("--tokens 400 --checkpoint 100 --sample 10 --threads 1 --layer-type hca --slack-mb -1", status);
  EXPECT_NE(status, 0);
  EXPECT_THAT(out, ::testing::HasSubstr("RSS grew"));
  EXPECT_THAT(out, ::testing::HasSubstr("MB more than the state (slack -1"));
  EXPECT_THAT(out, ::testing::HasSubstr("FAILED"));
}

}  // namespace
}  // namespace dsv4
