// The naive reference: one DeepSeek-V4 attention layer as straight loops over
// the spec, with dense masks and full sorts. Obviously correct, slow, and used
// only by the tests to check the fast path.
#pragma once
#include <map>
#include <string>
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

// The CSA selection of a one-shot forward over x [B, S, d]: per sequence, per
// query, the entries the indexer keeps (best first), computed exactly as
// forward does. Empty per sequence for sliding and HCA layers.
using Selection = std::vector<std::vector<std::vector<int64_t>>>;
Selection select_topk(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x);

// `backward` (above) with the CSA selection given instead of computed — e.g. the one
// a fast forward made, where the indexer's scores have near-ties that fp32 and
// double could break differently. `sink_terms` (if given) gets per head
// Σ_queries p_sink·|dO|·|o|: the size of the terms the sink's gradient sums,
// which cancel to far less; an fp32 result's rounding is relative to this.
LayerGradients backward(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x, const Tensor& dy,
                        const Selection& sel, std::vector<double>* sink_terms = nullptr);

// For finite differences: a layer's input and weights widened to double, so
// that a step of 1e-6 is not lost to fp32 rounding. `w` holds every tensor of
// the layer type under its spec name (weight_specs in dsv4/weights.h,
// e.g. "q_a_proj.weight", "compressor.position_bias"), row-major.
struct Point64 {
  Shape x_shape;  // [B, S, d]
  std::vector<double> x;
  std::map<std::string, std::vector<double>> w;
};
Point64 widen(const Config& c, LayerType t, const LayerWeights& w, const Tensor& x);

// The forward of `backward`, entirely in double, with the CSA selection given
// (held fixed: nothing here depends on the indexer's weights) -> y [B, S, d].
std::vector<double> forward_f64(const Config& c, LayerType t, const Point64& p, const Selection& sel);
// L = Σ forward_f64(p) · dy: the loss whose gradient `backward` returns.
double loss_f64(const Config& c, LayerType t, const Point64& p, const Tensor& dy, const Selection& sel);

// RoPE frequencies f_i of a layer of type t (plain θ for sliding, YaRN θ_c for
// CSA/HCA, plain θ_c if rope_scaling.type is empty), from the spec.
std::vector<float> rope_inv_freq(const Config& c, LayerType t);

}  // namespace dsv4::reference
