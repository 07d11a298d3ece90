// The state fuzzer's seeds load: each is a real save_state file, and the
// harness's header repairs (fuzz/state_fuzz_input.h) leave it unchanged. A
// format change the harness does not follow fails here.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "../fuzz/state_fuzz_input.h"
#include "../fuzz/state_seeds.h"
#include "dsv4/state.h"

namespace dsv4 {
namespace {

TEST(StateFuzzSeeds, EverySeedLoads) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("dsv4_seeds_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const Config c = fuzz::state_fuzz_config();
  const auto seeds = fuzz::state_seeds(dir);
  ASSERT_EQ(seeds.size(), 24u);  // 3 types x 2 numerics x 4 positions
  int64_t with_entries = 0;
  for (const fuzz::StateSeed& seed : seeds) {
    SCOPED_TRACE(seed.name);
    const fuzz::StateInput in = fuzz::state_fuzz_input(seed.input.data(), seed.input.size(), c);
    ASSERT_EQ(in.file.size() + 1, seed.input.size());
    EXPECT_EQ(std::memcmp(in.file.data(), seed.input.data() + 1, in.file.size()), 0)
        << "the harness's repairs change a valid file";
    const std::filesystem::path file = dir / seed.name;
    std::ofstream(file, std::ios::binary).write(in.file.data(), static_cast<std::streamsize>(in.file.size()));
    const LayerState s = load_state(c, in.type, file, in.numerics);
    EXPECT_EQ(s.bytes(), state_bytes(c, in.type, s.position(), in.numerics));
    with_entries += s.compressor().emitted > 0;
    const std::filesystem::path again = dir / (seed.name + ".again");  // loads what was saved, byte for byte
    save_state(s, c, again);
    std::ifstream a(again, std::ios::binary);
    EXPECT_EQ(std::vector<char>(std::istreambuf_iterator<char>(a), {}), in.file);
  }
  EXPECT_EQ(with_entries, 10);  // both numerics: CSA at positions 3, 6, 13; HCA at 6, 13
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dsv4
