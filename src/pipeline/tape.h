// What a training forward records for the backward (Layer::forward_train):
// the scheduler fills it (record.cpp), train/ reads it.
#pragma once
#include <cstdint>
#include <vector>

#include "dsv4/state.h"
#include "dsv4/tensor.h"

namespace dsv4 {

struct PackedLayer;

// One sequence. Everything else the backward needs (raw projections, q,
// pooled entries, norms' scales) is recomputed from x, chunk by chunk.
struct SeqTape {
  int64_t len = 0;
  // Positions of the first query and of kv's first row: 0 for a one-shot
  // sequence; a context-parallel block [p0, p0 + len) also keeps the window's
  // rows before it (kv0 = max(0, p0 - W + 1)). The other per-query rows start at p0.
  int64_t p0 = 0, kv0 = 0;
  std::vector<float> kv;      // [p0 + S - kv0, D]  key = value rows after norm and RoPE
  RowStore entries;           // [T, D]      compressed entries (CSA / HCA), fp32
  std::vector<int32_t> topk;  // [S, width]  CSA selection, -1 = empty slot
  int64_t width = 0;
  std::vector<float> o;        // [S, H·D]    attention output after de-rotation (o_a's input)
  std::vector<float> grouped;  // [S, g·d_g]  o_b's input
};

// Sizes t for `len` tokens from position p0 (0: a one-shot sequence; the CSA
// selection padded to min(k, (p0 + len) / m)), keeping the memory t already holds.
void size_seq_tape(const PackedLayer& p, int64_t len, SeqTape& t, int64_t p0 = 0);

struct TapeData {
  const PackedLayer* layer = nullptr;  // the layer that made it (backward checks)
  Shape x_shape;                       // as given ([B, S, d], [S, d] or packed [T, d])
  std::vector<float> x;                // copy of the input
  std::vector<int64_t> cu;             // the sequences' rows in x: sequence i is [cu_i, cu_i+1)
  std::vector<SeqTape> seqs;
  // A context-parallel block (Layer::forward_train through a state): one
  // sequence (seqs[0]) and its token rows [rows_first, p0 + len) (Layer::token_rows).
  bool block = false;
  int64_t rows_first = 0;
  std::vector<float> rows;
  size_t bytes() const;
};

}  // namespace dsv4
