// How checkpoints store a layer's weights beyond the weight table
// (dsv4/weights.h): FP8 block scales and alternative spellings of names.
#pragma once
#include <string>

#include "dsv4/weights.h"

namespace dsv4 {

// The spec name for `name`, which may be an alternative spelling: some
// transformers versions drop "scorer." from the indexer's head weights.
std::string canonical_name(const std::string& name);

// FP8 weights carry one scale per 128x128 block; edge blocks are partial.
constexpr int64_t kScaleBlock = 128;
Shape scale_grid(const Shape& weight);  // [ceil(rows/128), ceil(cols/128)] of a 2-D weight
// w[i][j] *= s[i/128][j/128]; s must have shape scale_grid(w.shape).
void apply_block_scales(Tensor& w, const Tensor& s);

}  // namespace dsv4
