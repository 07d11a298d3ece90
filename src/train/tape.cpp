// Tape (dsv4/train.h): holds a forward_train's record (pipeline/tape.h).
#include "pipeline/tape.h"
#include "dsv4/train.h"

namespace dsv4 {

Tape::Tape() = default;
Tape::~Tape() = default;
Tape::Tape(Tape&&) noexcept = default;
Tape& Tape::operator=(Tape&&) noexcept = default;
bool Tape::empty() const { return !d_; }
size_t Tape::bytes() const { return d_ ? d_->bytes() : 0; }

}  // namespace dsv4
