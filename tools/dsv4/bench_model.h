// What `dsv4 bench` measures against: the FLOPs of the sparse algorithm and
// the machine's own roofline (measure_roofline in dsv4/profile.h).
#pragma once
#include <cstdint>
#include <cstdio>

#include "dsv4/config.h"
#include "dsv4/layer.h"
#include "dsv4/profile.h"
#include "dsv4/weights.h"

namespace dsv4::cli {

// FLOPs of n tokens at positions p0..p0+n-1 (multiply-add = 2). Per token t:
//   projections  2·d·(r_q + D + [C,Z: 2·in_w] + [CSA: 4·D_I + H_I]) + 2·r_q·(H·D + [CSA: H_I·D_I])
//   attention    4·H·D·n_keys(t), n_keys = min(W, t+1) + (HCA: ⌊(t+1)/m'⌋, CSA: min(k, ⌊(t+1)/m⌋))
//   indexer      (2·D_I + 2)·H_I·⌊(t+1)/m⌋          (CSA: scores of eligible entries)
//   output       2·H·D·d_g + 2·g·d_g·d
//   compressor   6·slots·width per emitted entry (exp, sum, weighted sum)
double layer_flops(const Config& c, LayerType t, int64_t p0, int64_t n);

// What one decode step at context `ctx` must read besides the weights: the
// window, CSA's indexer keys (all eligible) and its selected entries (k), HCA's
// entries (all), in the numerics' row formats; and the indexer's multiply-adds
// (eligible keys x H_I x D_I) and the attention's (H x D x 2 per key: logits
// and output). The step's bounds: (weights + bytes) / bandwidth, and the
// multiply-adds at the machine's rates (compute_bound).
struct StepReads {
  double bytes = 0, macs = 0, attention_macs = 0;
};
StepReads step_reads(const Config& c, LayerType t, int64_t ctx, Numerics n);

// Seconds of a step's multiply-adds: the indexer's at the int8 peak of the
// instruction the deployment kernel runs on (Roofline::int8_macs_per_s; the
// reference numerics' fp32 indexer, and builds without an int8 kernel, at the
// sgemm rate), plus the attention's at the sgemm rate. The bound is their sum.
struct ComputeBound {
  double indexer_s = 0, attention_s = 0;
  double indexer_rate = 0;  // multiply-adds/s
  const char* indexer_at = "sgemm";
  double seconds() const { return indexer_s + attention_s; }
};
ComputeBound compute_bound(const StepReads& r, const Roofline& roof, Numerics n);

// "  memory: copy …, read … before the steps, read … after them": the roofline's
// bandwidths and a second read probe after the timed steps (the VM's memory
// speed can change during a run; docs/performance.md, stop 29).
void print_memory(std::FILE* out, const Roofline& roof, double read_after);

int64_t peak_rss_bytes();     // of this process so far
int64_t current_rss_bytes();  // resident now (/proc/self/statm)

// The conformance "small" dims (d 64, H 4, D 32, W 8, m 4, m' 8, ...), layer
// types sliding, CSA, HCA: synth-model's folders and the soak.
Config small_dims();

}  // namespace dsv4::cli
