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

}  // namespace dsv4
