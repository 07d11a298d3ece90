// Deployment numerics in the pipeline: how window rows, compressed entries,
// indexer keys and queries are rounded and stored (official_numerics.md,
// "Where the roundings go"). The attention and the indexer read the
// dequantised values, for a chunk's own rows as well as cached ones.
#include <algorithm>

#include "ops/quant.h"
#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

constexpr int64_t kParallelRows = 256;  // decode fewer rows on the calling thread

}  // namespace

void encode_row(const PackedLayer& p, bool index_key, float* x, uint8_t* row, float* dq) {
  if (index_key) {
    const int64_t di = p.c.index_head_dim;
    quant::hadamard(x, di);
    quant::index_row_encode(x, di, row, dq);
  } else {
    quant::kv_row_encode(x, p.c.head_dim, p.c.qk_rope_head_dim, row, dq);
  }
}

void decode_rows(const PackedLayer& p, bool index_key, const uint8_t* rows, int64_t n, float* out) {
  const int64_t width = index_key ? p.c.index_head_dim : p.c.head_dim, r = p.c.qk_rope_head_dim;
  const size_t rb = index_key ? quant::index_row_bytes(width) : quant::kv_row_bytes(width, r);
  auto one = [&](int64_t i) {
    if (index_key)
      quant::index_row_decode(rows + i * rb, width, out + i * width);
    else
      quant::kv_row_decode(rows + i * rb, width, r, out + i * width);
  };
  if (n < kParallelRows) {  // no thread wake-up for a window row or a short cache
    for (int64_t i = 0; i < n; ++i) one(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) one(i);
}

const float* entries_f32(const PackedLayer& p, const CompressorState& st, int64_t n, bool index_keys,
                         Scratch<float>& buf) {
  if (!st.row_bytes) return st.entries.data();
  float* out = buf.get(static_cast<size_t>(std::max<int64_t>(n, 1) * st.width));
  decode_rows(p, index_keys, st.coded.data(), n, out);
  return out;
}

void round_index_queries(const PackedLayer& p, Projected& pr, int64_t rows) {
  const int64_t hi = p.c.index_n_heads, di = p.c.index_head_dim;
#pragma omp parallel for schedule(static) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < hi; ++h) {
      float* q = &pr.up[r * p.n_up + p.off_iq + h * di];
      quant::hadamard(q, di);
      quant::fp4_qdq(q, di);
    }
}

}  // namespace dsv4
