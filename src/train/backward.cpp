// Layer::forward_train / Layer::backward: the orchestration of the backward
// pass, stage by stage in reverse pipeline order.
#include "dsv4/error.h"
#include "dsv4/layer.h"
#include "pipeline/pipeline.h"
#include "train/tape.h"

namespace dsv4 {

size_t TapeData::bytes() const {
  size_t n = x.size() * sizeof(float);
  for (const SeqTape& s : seqs)
    n += (s.kv.size() + s.entries.size() + s.o.size() + s.grouped.size()) * sizeof(float) +
         s.topk.size() * sizeof(int32_t);
  return n;
}

Tape::Tape() = default;
Tape::~Tape() = default;
Tape::Tape(Tape&&) noexcept = default;
Tape& Tape::operator=(Tape&&) noexcept = default;
bool Tape::empty() const { return !d_; }
size_t Tape::bytes() const { return d_ ? d_->bytes() : 0; }

Tensor Layer::forward_train(TensorView, Tape&) const { fail("forward_train: not implemented yet"); }
LayerGradients Layer::backward(const Tape&, TensorView) const { fail("backward: not implemented yet"); }
LayerGradients Layer::backward(TensorView x, TensorView dy) const {
  Tape tape;
  forward_train(x, tape);
  return backward(tape, dy);
}

}  // namespace dsv4
