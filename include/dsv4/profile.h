// Profiling: wall-clock seconds per pipeline stage, accumulated over forward
// calls (pass a StageTimes* to Layer::forward to collect them), and the
// machine's own ceilings that benchmarks compare against.
#pragma once

namespace dsv4 {

struct StageTimes {
  double project = 0;       // fused projections, norms, RoPE
  double compress = 0;      // compressor pooling (main + indexer)
  double index_scores = 0;  // CSA indexer scoring
  double topk = 0;          // CSA top-k selection
  double attention = 0;     // sparse gather attention with the sink
  double output = 0;        // de-rotation, grouped projection, o_b
  double total() const { return project + compress + index_scores + topk + attention + output; }
};

struct Roofline {
  double sgemm_gflops = 0;   // dsv4's tiled OpenBLAS sgemm, 2048^3, all threads, best of 3
  double copy_gb_per_s = 0;  // memcpy of 256 MiB, (read + write) bytes / s, best of 3
  double read_gb_per_s = 0;  // measure_read_bandwidth(): what a decode step's weight stream can reach
  // The int8 multiply-add peak, all threads, of the instruction the deployment
  // indexer's kernel runs on: vpdpbusd (AVX-512 VNNI) where the CPU has it,
  // else vpmaddubsw (AVX2); 0 and instruction null where neither is built.
  double int8_macs_per_s = 0;
  const char* int8_instruction = nullptr;
};
Roofline measure_roofline();  // takes about a second
// Read-only bandwidth, all threads: 256 MiB streamed once, bytes / s, best of 3.
// On a VM it can move by 1.5x within minutes (docs/performance.md, "memory
// modes"), so benchmarks measure it again after their timed steps.
double measure_read_bandwidth();

}  // namespace dsv4
