// A minimal owned fp32 tensor: row-major, shape + flat data. The library
// passes raw spans internally; this is the type of the public API.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace dsv4 {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3, 4]"

struct Tensor {
  Shape shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(Shape s);               // zeros (a large one on transparent huge pages where the system offers them)
  Tensor(Shape s, std::vector<float> d);  // checks that sizes agree

  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  int64_t dim(size_t i) const { return shape.at(i); }
  bool empty() const { return data.empty(); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
};

// A read-only view of row-major fp32 data owned elsewhere (a NumPy array, a
// Tensor): lets callers hand their buffers to a layer without a copy.
struct TensorView {
  const float* data = nullptr;
  Shape shape;

  TensorView() = default;
  TensorView(const float* d, Shape s) : data(d), shape(std::move(s)) {}
  TensorView(const Tensor& t);  // NOLINT(google-explicit-constructor): checks data size == shape
  int64_t numel() const { return dsv4::numel(shape); }
  int64_t dim(size_t i) const { return shape.at(i); }
};

// int64 companion (positions, top-k indices).
struct TensorI64 {
  Shape shape;
  std::vector<int64_t> data;
};

}  // namespace dsv4
