// Stage 5: undo the value's RoPE on each head's output (angle -t·f), then the
// grouped output projection (g GEMMs, one per block of W_oa) and W_ob.
#include <vector>

#include "ops/blas.h"
#include "ops/rope.h"
#include "pipeline/pipeline.h"

namespace dsv4 {

// The row-invariant rows (decode) in one parallel region: the de-rotation,
// every o_a block's row tiles, then (after the barrier: each reads all blocks)
// W_ob's — one fork/join and two barriers where g + 1 regions were, each tile
// the dot products linear() computes. The BLAS groups (prefill) after it, as linear().
void output_project(const PackedLayer& p, float* o, int64_t rows, const int64_t* pos,
                    const std::vector<RowGroup>& groups, float* grouped, float* out) {
  const Config& c = p.c;
  const int64_t hd = c.head_dim, h_n = c.num_attention_heads;
  const int64_t g = c.o_groups, dg = c.o_lora_rank, gw = h_n * hd / g;
  RowTiles oa, ob;
  for (int64_t i = 0; i < g; ++i) oa.add(groups, o + i * gw, h_n * hd, p.w_oa, i * dg, dg, grouped + i * dg, g * dg);
  ob.add(groups, grouped, g * dg, p.w_ob, 0, c.hidden_size, out, c.hidden_size);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) RopeAngles(p.inv_freq, pos[r]).rotate(o + r * h_n * hd, h_n, hd, true);
    oa.share();
    ob.share();
  }
  std::vector<RowGroup> blas;
  for (const RowGroup& rg : groups)
    if (!rg.rowwise) blas.push_back(rg);
  if (blas.empty()) return;
  for (int64_t i = 0; i < g; ++i) linear(blas, dg, o + i * gw, h_n * hd, p.w_oa, i * dg, grouped + i * dg, g * dg);
  linear(blas, c.hidden_size, grouped, g * dg, p.w_ob, 0, out, c.hidden_size);
}

}  // namespace dsv4
