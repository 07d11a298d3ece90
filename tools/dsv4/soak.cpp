// dsv4 soak: decode many tokens one at a time through each layer type at the
// conformance "small" dims, checking what a long-running server relies on:
//   - every output finite;
//   - memory follows the state: RSS (after malloc_trim, which returns the
//     blocks a growing vector left behind) and heap bytes in use, minus
//     LayerState::bytes(), sampled every --sample tokens, do not grow after the
//     first checkpoint by more than --slack-mb; bytes() stays within 2x of
//     state_bytes()'s tight size;
//   - every --checkpoint tokens the state is saved and loaded; the loaded one
//     saves to the same bytes and continues bit for bit (the next --verify
//     tokens through both), then replaces the original.
// One summary line per layer type ("soak TYPE: ... ok" or "... FAILED"), exit
// status 1 on any failure. tests/soak_test.cpp runs a short one.
#include <malloc.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "bench_model.h"
#include "commands.h"
#include "dsv4/layer.h"
#include "dsv4/random.h"

namespace dsv4::cli {
namespace {

struct SoakArgs {
  int64_t tokens = 100000, checkpoint = 10000, sample = 1000, verify = 16;
  std::vector<std::string> types = {"swa", "csa", "hca"};
  std::string numerics = "reference";
  double slack_mb = 4;
  int threads = 0;
};

constexpr double kMB = 1e6;

// AddressSanitizer's allocator keeps freed blocks in quarantine (RSS grows by
// hundreds of MB) and has no mallinfo: no memory figure means anything there.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kMemoryMeasured = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kMemoryMeasured = false;
#else
constexpr bool kMemoryMeasured = true;
#endif
#else
constexpr bool kMemoryMeasured = true;
#endif

std::vector<char> bytes_of(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool finite(const Tensor& y) {
  return std::all_of(y.data.begin(), y.data.end(), [](float v) { return std::isfinite(v); });
}

// Resident bytes once the allocator has returned its free pages (glibc keeps the
// blocks a growing vector leaves behind; they are not a leak), and heap bytes in use.
struct Memory {
  double rss = 0, heap = 0;
};
Memory memory() {
#ifdef __GLIBC__
  malloc_trim(0);
  const struct mallinfo2 m = mallinfo2();
  return {static_cast<double>(current_rss_bytes()), static_cast<double>(m.uordblks + m.hblkhd)};
#else
  return {static_cast<double>(current_rss_bytes()), 0};
#endif
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape == b.shape && std::memcmp(a.ptr(), b.ptr(), a.data.size() * sizeof(float)) == 0;
}

// A memory figure minus the state's bytes, from the first checkpoint on.
struct Drift {
  double base = 0, max = 0, last = 0;
  void add(double v, bool first) {
    if (first) base = max = v;
    max = std::max(max, v), last = v;
  }
  double growth() const { return max - base; }
};

struct Result {
  std::vector<std::string> failures;
  int checkpoints = 0, continued = 0;  // save/loads, and those that continued bit for bit
  double seconds = 0, state0 = 0, state1 = 0, tight1 = 0, rss0 = 0, rss1 = 0;
  bool warm = false;  // past the first checkpoint
  Drift rss, heap;
};

// Saves `s`, loads it, checks the bytes round trip, and that both continue alike
// over `next` tokens (then `s` becomes the loaded state).
void checkpoint(const Layer& layer, LayerState& s, const Tensor& pool, int64_t at, int64_t next,
                const std::filesystem::path& file, Result& r) {
  const Config& c = layer.config();
  save_state(s, c, file);
  LayerState loaded = load_state(c, layer.type(), file, layer.numerics());
  const std::vector<char> first = bytes_of(file);
  save_state(loaded, c, file);
  if (bytes_of(file) != first)
    r.failures.push_back("position " + std::to_string(at) + ": the loaded state saves other bytes");
  const int64_t d = c.hidden_size, rows = pool.dim(0);
  bool same = true;
  for (int64_t i = 0; i < next && same; ++i) {
    const TensorView x(pool.ptr() + ((at + i) % rows) * d, {1, d});
    const Tensor y = layer.forward(x, s);
    same = finite(y) && same_bits(y, layer.forward(x, loaded));
    if (!same) r.failures.push_back("position " + std::to_string(at + i) + ": the loaded state continues differently");
  }
  s = std::move(loaded);
  ++r.checkpoints;
  r.continued += same;
}

Result soak(const SoakArgs& a, LayerType t, const std::filesystem::path& file) {
  const Config c = small_dims();
  const Numerics n = parse_numerics(a.numerics);
  const Layer layer(c, t, random_layer_weights(c, t, 5), LayerOptions{WeightFormat::f32, n});
  const Tensor pool = random_uniform({4093, c.hidden_size}, 1.0f, 9);  // inputs, cycled (a prime count of rows)
  LayerState s = layer.new_state();
  Result r;
  r.state0 = static_cast<double>(s.bytes()), r.rss0 = memory().rss;
  const double t0 = omp_get_wtime();
  for (int64_t p = 0; p < a.tokens;) {
    if (p > 0 && p % a.checkpoint == 0) {
      const int64_t next = std::min(a.verify, a.tokens - p);
      checkpoint(layer, s, pool, p, next, file, r);
      p += next;
    } else {
      const Tensor y = layer.forward(TensorView(pool.ptr() + (p % pool.dim(0)) * c.hidden_size, {1, c.hidden_size}), s);
      if (!finite(y) && r.failures.size() < 10)
        r.failures.push_back("position " + std::to_string(p) + ": non-finite output");
      ++p;
    }
    if (p % a.sample == 0 || p == a.tokens) {
      const Memory m = memory();
      const double state = static_cast<double>(s.bytes());
      const bool first = kMemoryMeasured && !r.warm && r.checkpoints > 0;
      r.warm = r.warm || first;
      if (r.warm) r.rss.add(m.rss - state, first), r.heap.add(m.heap - state, first);
    }
  }
  r.seconds = omp_get_wtime() - t0;
  r.state1 = static_cast<double>(s.bytes()), r.rss1 = memory().rss;
  r.tight1 = static_cast<double>(state_bytes(c, t, s.position(), n));
  if (s.position() != a.tokens) r.failures.push_back("ended at position " + std::to_string(s.position()));
  if (r.state1 > 2 * r.tight1) r.failures.push_back("the state holds more than twice its tight size");
  for (const auto& [what, d] : {std::pair{"RSS", &r.rss}, std::pair{"heap in use", &r.heap}})
    if (r.warm && d->growth() > a.slack_mb * kMB)
      r.failures.push_back(std::string(what) + " grew " + std::to_string(d->growth() / kMB) +
                           " MB more than the state (slack " + std::to_string(a.slack_mb) + " MB)");
  return r;
}

int run(const SoakArgs& a) {
  if (a.threads > 0) omp_set_num_threads(a.threads);
  if (a.tokens < 1 || a.checkpoint < 1 || a.sample < 1) fail("soak: --tokens, --checkpoint and --sample must be >= 1");
  const std::filesystem::path file =
      std::filesystem::temp_directory_path() / ("dsv4_soak_" + std::to_string(::getpid()) + ".state");
  int failed = 0;
  std::printf(
      "dsv4 soak: %lld tokens one at a time per layer type, small dims, %s numerics, %d threads; "
      "save/load every %lld\n",
      static_cast<long long>(a.tokens), a.numerics.c_str(), omp_get_max_threads(),
      static_cast<long long>(a.checkpoint));
  for (const std::string& name : a.types) {
    const LayerType t = parse_layer_type(name);
    const Result r = soak(a, t, file);
    char growth[160] = "not measured (AddressSanitizer build)";
    if (kMemoryMeasured)
      std::snprintf(growth, sizeof growth, "RSS %.2f MB, heap %.2f MB", r.rss.growth() / kMB, r.heap.growth() / kMB);
    std::printf(
        "soak %s: %lld tokens in %.1f s (%.0f us/token); state %.3f -> %.3f MB (tight %.3f MB); "
        "RSS %.1f -> %.1f MB; growth beyond the state after the first checkpoint: %s; "
        "%d of %d checkpoints continued bit for bit; %s\n",
        name.c_str(), static_cast<long long>(a.tokens), r.seconds, 1e6 * r.seconds / double(a.tokens), r.state0 / kMB,
        r.state1 / kMB, r.tight1 / kMB, r.rss0 / kMB, r.rss1 / kMB, growth, r.continued, r.checkpoints,
        r.failures.empty() ? "ok" : "FAILED");
    for (const std::string& f : r.failures) std::printf("  %s\n", f.c_str());
    std::fflush(stdout);
    failed += !r.failures.empty();
  }
  std::filesystem::remove(file);
  return failed ? 1 : 0;
}

}  // namespace

void add_soak(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand("soak",
                                 "Decode many tokens through each layer type (small dims): outputs finite, memory "
                                 "follows the state, save/load every N tokens continues bit for bit");
  auto a = std::make_shared<SoakArgs>();
  cmd->add_option("--tokens", a->tokens, "tokens per layer type")->capture_default_str();
  cmd->add_option("--checkpoint", a->checkpoint, "save/load the state every N tokens")->capture_default_str();
  cmd->add_option("--sample", a->sample, "sample RSS every N tokens")->capture_default_str();
  cmd->add_option("--verify", a->verify, "tokens run through both the saved and the loaded state")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--layer-type", a->types, "layer types (comma-separated)")->delimiter(',')->capture_default_str();
  cmd->add_option("--numerics", a->numerics, "reference or deployment")
      ->check(CLI::IsMember({"reference", "deployment"}))
      ->capture_default_str();
  cmd->add_option("--slack-mb", a->slack_mb, "allowed growth of RSS beyond the state's, MB")->capture_default_str();
  cmd->add_option("-t,--threads", a->threads, "OpenMP threads (default: all)")->check(CLI::PositiveNumber);
  cmd->callback([&rc, a] { rc = run(*a); });
}

}  // namespace dsv4::cli
