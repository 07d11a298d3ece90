#include "dsv4/tensor.h"

#include "dsv4/error.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdint>

namespace dsv4 {
namespace {

// A fresh allocation this large is an mmap of its own (glibc's threshold stops
// growing at 32 MiB), so each 4 KiB page faults on its first touch: on this VM
// 42 ms of CPU for a packed buffer's [87,335, 256] output, ~7 ms on 2 MiB pages.
// Smaller tensors come back warm from the heap. Only where the system leaves
// transparent huge pages to madvise; elsewhere nothing changes.
constexpr size_t kHugeBytes = size_t{32} << 20;

void advise_huge_pages([[maybe_unused]] const float* p, [[maybe_unused]] size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kPage = uintptr_t{2} << 20;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const uintptr_t e = reinterpret_cast<uintptr_t>(p + n) & ~(kPage - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);  // advice: failure changes nothing
#endif
}

}  // namespace

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

Tensor::Tensor(Shape s) : shape(std::move(s)) {
  const auto n = static_cast<size_t>(dsv4::numel(shape));
  if (n * sizeof(float) >= kHugeBytes) {  // untouched yet: advise before the zeros fault the pages in
    data.reserve(n);
    advise_huge_pages(data.data(), n);
  }
  data.resize(n);
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
