// Crash-safe writes (dsv4/atomic_file.h) for every file dsv4 writes: a writer
// killed mid-write (SIGKILL as soon as its temporary file exists, plus a random
// delay) leaves the target absent, or whole; a failure the process survives
// leaves no temporary file. Writers: save_state, write_safetensors, the CLI's
// `run` output and `synth-model` folder (the Python save_safetensors:
// python/tests/test_atomic_write.py).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <thread>

#include "dsv4/atomic_file.h"
#include "dsv4/model.h"
#include "dsv4/safetensors.h"
#include "dsv4/state.h"
#include "test_util.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class AtomicWrite : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dsv4_atomic_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Paths under dir_ (recursively) whose name contains `part`; tolerates files vanishing meanwhile.
  std::vector<fs::path> files_with(const std::string& part) const {
    std::vector<fs::path> out;
    std::error_code ec;
    for (fs::recursive_directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().filename().string().find(part) != std::string::npos) out.push_back(it->path());
    return out;
  }
  std::vector<fs::path> temp_files() const { return files_with(".tmp."); }
  void remove_temp_files() const {
    for (const fs::path& p : temp_files()) fs::remove(p);
  }

  // Starts `child` in a forked process, SIGKILLs it once a file whose name
  // contains `marker` appears under dir_ (its temporary file, or the target
  // of a writer that is not atomic) plus 0..max_delay_us; true if it was
  // killed (false: it finished first).
  bool kill_mid_write(const std::function<void()>& child, const std::string& marker, int max_delay_us,
                      std::mt19937& rng) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      child();
      ::_exit(0);
    }
    bool seen = false;
    for (int i = 0; i < 200000 && !seen; ++i) {
      seen = !files_with(marker).empty();
      if (!seen) std::this_thread::sleep_for(std::chrono::microseconds(100));
      if (::waitpid(pid, nullptr, WNOHANG) == pid) return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % (max_delay_us + 1)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFSIGNALED(status);
  }

  // Runs the dsv4 binary with args in a child (stdout and stderr to /dev/null).
  std::function<void()> cli(std::vector<std::string> args) const {
    const std::string bin = test::dsv4_binary().string();
    return [bin, args] {
      std::vector<char*> argv{const_cast<char*>(bin.c_str())};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      std::freopen("/dev/null", "w", stdout);
      std::freopen("/dev/null", "w", stderr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    };
  }

  fs::path dir_;
};

// Whole or absent: a safetensors file opens (the reader checks the exact tiling) with `tensor` of `numel` values.
void expect_whole_safetensors(const fs::path& p, const std::string& tensor, int64_t numel) {
  if (!fs::exists(p)) return;
  const SafeTensors f = SafeTensors::open(p);
  EXPECT_EQ(f.f32(tensor).numel(), numel) << p;
}

// An HCA state at `tokens` tokens with every entry `value` (a few MB, made without a forward).
LayerState big_state(const Layer& layer, int64_t tokens, float value) {
  LayerState s = layer.new_state();
  const Config& c = layer.config();
  s.advance(tokens);
  CompressorState& comp = s.compressor();
  comp.pending = tokens % c.compress_rate_hca;
  comp.emitted = tokens / c.compress_rate_hca;
  comp.entries.assign(comp.emitted);  // reference numerics: fp32 rows
  std::fill_n(reinterpret_cast<float*>(comp.entries.data()), comp.emitted * c.head_dim, value);
  return s;
}

TEST_F(AtomicWrite, KilledSaveStateLeavesOldOrNewFile) {
  std::mt19937 rng(1);
  const Config c = test::small_config();
  const LayerType t = LayerType::hca;
  const Layer layer(c, t, test::random_weights(c, t, rng));
  const LayerState a = big_state(layer, 200000, 1.0f), b = big_state(layer, 200008, 2.0f);  // 3.2 MB each
  const fs::path file = dir_ / "s.state";
  int mid_write = 0;
  for (int i = 0; i < 20; ++i) {
    const bool killed = kill_mid_write(
        [&] {
          for (int k = 0;; ++k) save_state(k % 2 ? b : a, c, file);
        },
        ".tmp.", 3000, rng);
    ASSERT_TRUE(killed);
    mid_write += !temp_files().empty();
    remove_temp_files();
    if (!fs::exists(file)) continue;
    const LayerState s = load_state(c, t, file);  // throws on a torn file
    EXPECT_TRUE(s.position() == 200000 || s.position() == 200008);
  }
  EXPECT_GT(mid_write, 0) << "no kill landed while a temporary file existed";
}

TEST_F(AtomicWrite, KilledSafetensorsWriterLeavesOldOrNewFile) {
  std::mt19937 rng(2);
  const Tensor big({4 << 20});  // 16 MB
  const fs::path file = dir_ / "t.safetensors";
  int mid_write = 0;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(kill_mid_write(
        [&] {
          for (;;) write_safetensors(file, {named("t", big)});
        },
        ".tmp.", 5000, rng));
    mid_write += !temp_files().empty();
    remove_temp_files();
    expect_whole_safetensors(file, "t", big.numel());
  }
  EXPECT_GT(mid_write, 0);
}

// `dsv4 run` writing a 25 MB output, and `dsv4 synth-model` a folder of files,
// killed as soon as they start writing: never a torn file.
TEST_F(AtomicWrite, KilledCliRunAndSynthModelLeaveWholeFiles) {
  std::mt19937 rng(3);
  const fs::path model = dir_ / "model", out = dir_ / "out.safetensors", input = dir_ / "input.safetensors";
  ASSERT_EQ(test::sh("'" + test::dsv4_binary().string() + "' synth-model '" + model.string() + "'", dir_ / "log"), 0);
  const Tensor x = test::random_tensor({1, 100000, 64}, rng);
  write_safetensors(input, {named("hidden_states", x)});
  int mid_write = 0;
  for (int i = 0; i < 5; ++i) {
    kill_mid_write(cli({"run", "--model", model.string(), "--layer", "0", "--input", input.string(), "--output",
                        out.string(), "--threads", "1"}),
                   "out.safetensors", 5000, rng);
    mid_write += !temp_files().empty();
    remove_temp_files();
    expect_whole_safetensors(out, "output", x.numel());
  }
  EXPECT_GT(mid_write, 0);
  for (int i = 0; i < 10; ++i) {
    const fs::path m = dir_ / ("synth" + std::to_string(i));
    kill_mid_write(cli({"synth-model", m.string(), "--sharded", "--other-modules"}), "synth", 3000, rng);
    remove_temp_files();
    if (!fs::exists(m)) continue;
    for (const auto& e : fs::directory_iterator(m)) {
      if (e.path().extension() == ".safetensors") {
        EXPECT_NO_THROW(SafeTensors::open(e.path())) << e.path();
      }
    }
    if (fs::exists(m / "config.json")) {  // written last: the folder is complete
      const Model opened = Model::open(m);
      EXPECT_NO_THROW(opened.layer(2)) << m;
    }
  }
}

// Failures the process survives: the target is a folder (the rename fails),
// the file size limit is hit mid-write, the writer is dropped before commit.
TEST_F(AtomicWrite, FailuresLeaveNoTemporaryFile) {
  std::mt19937 rng(4);
  const Config c = test::small_config();
  const Layer layer(c, LayerType::csa, test::random_weights(c, LayerType::csa, rng));
  LayerState s = layer.new_state();
  layer.forward(test::random_tensor({50, c.hidden_size}, rng), s);
  fs::create_directories(dir_ / "taken.state");
  fs::create_directories(dir_ / "taken.safetensors");
  try {
    save_state(s, c, dir_ / "taken.state");
    ADD_FAILURE() << "saved over a folder";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("save_state: '" + (dir_ / "taken.state").string() +
                                    "': cannot rename the temporary file over it"));
  }
  EXPECT_THROW(write_safetensors(dir_ / "taken.safetensors", {named("a", Tensor({4}))}), Error);
  EXPECT_THROW(write_file_atomic(dir_ / "taken.state", "x"), Error);
  {
    AtomicFile dropped(dir_ / "dropped.bin");
    dropped.write("partial");
  }
  EXPECT_TRUE(temp_files().empty());
  EXPECT_FALSE(fs::exists(dir_ / "dropped.bin"));

  const pid_t pid = ::fork();  // a 64 KB file size limit (EFBIG mid-write), in a child
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    const rlimit lim{1 << 16, 1 << 16};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    int failed = 0;
    try {
      write_safetensors(dir_ / "big.safetensors", {named("a", Tensor({1 << 16}))});
    } catch (const Error& e) {
      failed += std::string(e.what()).find("write failed: File too large") != std::string::npos;
    }
    try {
      LayerState big = s.clone();
      big.compressor().emitted = (1 << 16) / c.head_dim;  // a state file past the limit
      big.compressor().entries.resize(big.compressor().emitted);
      save_state(big, c, dir_ / "big.state");
    } catch (const Error& e) {
      failed += std::string(e.what()).find("File too large") != std::string::npos;
    }
    ::_exit(failed == 2 ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the writes past the limit did not fail as expected";
  EXPECT_TRUE(temp_files().empty());
  EXPECT_FALSE(fs::exists(dir_ / "big.safetensors"));
  EXPECT_FALSE(fs::exists(dir_ / "big.state"));
}

}  // namespace
}  // namespace dsv4
