// The naive reference: one DeepSeek-V4 attention layer as straight loops over
// the spec, with dense masks and full sorts. Obviously correct, slow, and used
// only by the tests to check the fast path.
#pragma once
#include <vector>

#include "dsv4/config.h"
#include "dsv4/layer.h"
#include "dsv4/tensor.h"
#include "dsv4/weights.h"

namespace dsv4::reference {

// One-shot forward over x [B, S, d] at positions 0..S-1 -> [B, S, d].
// Deployment numerics: `closest_tie` (if given) gets how near a rounded value
// came to a rounding decision (Rounder::closest in numerics.h).
Tensor forward(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x,
               std::vector<Intermediates>* debug = nullptr, Numerics numerics = Numerics::reference,
               double* closest_tie = nullptr);

// Gradients of sum(forward(x) · dy) w.r.t. x [B, S, d] and every weight
// (reference numerics), in straight loops with double accumulation: a forward
// that keeps its intermediates in double, then the chain rule stage by stage
// in reverse. The CSA selection is taken from the indexer and held fixed; the
// indexer's weights get zero. Implemented in backward.cpp.
LayerGradients backward(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x, const Tensor& dy);

// RoPE frequencies f_i of a layer of type t (plain θ for sliding, YaRN θ_c for
// CSA/HCA, plain θ_c if rope_scaling.type is empty), from the spec.
std::vector<float> rope_inv_freq(const Config& c, LayerType t);

}  // namespace dsv4::reference
