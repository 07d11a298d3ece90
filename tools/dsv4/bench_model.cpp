#include "bench_model.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "dsv4/state.h"

namespace dsv4::cli {

double layer_flops(const Config& c, LayerType t, int64_t p0, int64_t n) {
  const double d = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim, rq = c.q_lora_rank;
  const double hi = c.index_n_heads, di = c.index_head_dim;
  const bool csa = t == LayerType::csa, hca = t == LayerType::hca;
  const double in_w = csa ? 2 * hd : hd;
  const double proj = 2 * d * (rq + hd + (csa || hca ? 2 * in_w : 0) + (csa ? 4 * di + hi : 0)) +
                      2 * rq * (h * hd + (csa ? hi * di : 0));
  const double out = 2 * h * hd * c.o_lora_rank + 2.0 * c.o_groups * c.o_lora_rank * d;
  double f = 0;
  for (int64_t pos = p0; pos < p0 + n; ++pos) {
    double keys = static_cast<double>(std::min<int64_t>(c.sliding_window, pos + 1));
    if (hca) keys += static_cast<double>((pos + 1) / c.compress_rate_hca);
    if (csa) {
      const int64_t eligible = (pos + 1) / c.compress_rate_csa;
      keys += static_cast<double>(std::min(c.index_topk, eligible));
      f += (2 * di + 2) * hi * static_cast<double>(eligible);
    }
    f += proj + out + 4 * h * hd * keys;
  }
  // Compressor pooling: entries completed by these tokens.
  const int64_t r = c.compress_rate(t);
  if (r > 0) {
    const double entries = static_cast<double>((p0 + n) / r - p0 / r);
    const double slots = csa ? 2.0 * r : r;
    f += entries * 6 * slots * (hd + (csa ? di : 0));
  }
  return f;
}

StepReads step_reads(const Config& c, LayerType t, int64_t ctx, Numerics n) {
  const bool dep = n == Numerics::deployment;
  const double kv_row =
      dep ? static_cast<double>(RowStore(RowStore::Format::kv_fp8, c.head_dim, c.qk_rope_head_dim).row_bytes())
          : 4.0 * static_cast<double>(c.head_dim);
  const double key_row = dep ? static_cast<double>(RowStore(RowStore::Format::key_fp4, c.index_head_dim, 0).row_bytes())
                             : 4.0 * static_cast<double>(c.index_head_dim);
  StepReads r;
  double keys = static_cast<double>(std::min<int64_t>(ctx + 1, c.sliding_window));
  if (t == LayerType::hca) keys += static_cast<double>((ctx + 1) / c.compress_rate_hca);
  if (t == LayerType::csa) {
    const int64_t eligible = (ctx + 1) / c.compress_rate_csa;
    keys += static_cast<double>(std::min(c.index_topk, eligible));
    r.bytes += key_row * static_cast<double>(eligible);
    r.macs = static_cast<double>(eligible) * static_cast<double>(c.index_n_heads * c.index_head_dim);
  }
  r.bytes += kv_row * keys;
  r.attention_macs = 2.0 * static_cast<double>(c.num_attention_heads * c.head_dim) * keys;
  return r;
}

ComputeBound compute_bound(const StepReads& r, const Roofline& roof, Numerics n) {
  ComputeBound b;
  b.indexer_rate = roof.sgemm_gflops * 1e9 / 2;
  if (n == Numerics::deployment && roof.int8_instruction)
    b.indexer_rate = roof.int8_macs_per_s, b.indexer_at = roof.int8_instruction;
  b.indexer_s = r.macs / b.indexer_rate;
  b.attention_s = r.attention_macs / (roof.sgemm_gflops * 1e9 / 2);
  return b;
}

void print_memory(std::FILE* out, const Roofline& roof, double read_after) {
  std::fprintf(out, "  memory: copy %.1f GB/s, read %.1f GB/s before the steps, read %.1f GB/s after them\n",
               roof.copy_gb_per_s, roof.read_gb_per_s, read_after);
}

int64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

int64_t current_rss_bytes() {
  long pages = 0, resident = 0;
  if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<int64_t>(resident) * ::sysconf(_SC_PAGESIZE);
}

Config small_dims() {
  Config c;
  c.hidden_size = 64, c.num_attention_heads = 4, c.head_dim = 32, c.qk_rope_head_dim = 8;
  c.q_lora_rank = 32, c.o_groups = 2, c.o_lora_rank = 16, c.sliding_window = 8;
  c.compress_rate_csa = 4, c.compress_rate_hca = 8;
  c.index_n_heads = 4, c.index_head_dim = 16, c.index_topk = 3;
  c.rope_scaling.factor = 16, c.rope_scaling.original_max_position_embeddings = 64;
  c.layer_types = {LayerType::sliding, LayerType::csa, LayerType::hca};
  return c;
}

}  // namespace dsv4::cli
