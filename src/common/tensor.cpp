#include "dsv4/tensor.h"

#include "dsv4/error.h"

namespace dsv4 {

int64_t numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor::Tensor(Shape s, std::vector<float> d) : shape(std::move(s)), data(std::move(d)) {
  if (dsv4::numel(shape) != static_cast<int64_t>(data.size()))
    fail("tensor of shape " + shape_str(shape) + " given " + std::to_string(data.size()) + " values");
}

TensorView::TensorView(const Tensor& t) : data(t.ptr()), shape(t.shape) {
  if (t.numel() != dsv4::numel(shape))
    fail("tensor of shape " + shape_str(shape) + " holds " + std::to_string(t.numel()) + " values");
}

}  // namespace dsv4
