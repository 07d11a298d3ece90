// The backward pass of one layer (Layer::backward), internal.
#pragma once
#include "dsv4/train.h"
#include "pipeline/tape.h"

namespace dsv4 {

struct PackedLayer;

// Gradients of sum(y · dy) over the sequences a forward_train recorded in
// `tape` (dy: the forward's output shape; sequence after sequence, packed
// documents too): adds the weights' into
// grads.weights (shapes checked by the caller) and writes grads.dx (sized by
// the caller). Bit-identical for any thread count.
void backward_sequences(const PackedLayer& p, const TapeData& tape, const float* dy, LayerGradients& grads);

// A context-parallel block's backward (block_backward.cpp), the steps of
// Layer::block_backward_*: tape from Layer::forward_train through a state,
// inputs checked by the caller, steps called in order.
void block_attend(const PackedLayer& p, const TapeData& tape, const float* dy, BlockGradients& g, LayerWeights& w);
void block_compress(const PackedLayer& p, const TapeData& tape, BlockGradients& g, LayerWeights& w);
void block_project(const PackedLayer& p, const TapeData& tape, BlockGradients& g, LayerWeights& w);
// The steps a block's backward has done on `tape` (0: none; -1: g is another tape's).
int block_step(const BlockGradients& g, const TapeData& tape);

// Training needs reference numerics: a dsv4::Error naming `who` otherwise.
void check_trainable(const PackedLayer& p, const char* who);
// grads (to accumulate into) has every weight's shape; else an Error naming `who` and the weight.
void check_gradient_shapes(const PackedLayer& p, const LayerWeights& grads, const char* who);

}  // namespace dsv4
