// RowStore (dsv4/state.h): the one place that knows how a numerics stores
// window rows, compressed entries and indexer keys (ops/quant.h has the formats).
#include <algorithm>
#include <cstring>

#include "dsv4/error.h"
#include "dsv4/state.h"
#include "ops/quant.h"

namespace dsv4 {
namespace {

constexpr int64_t kParallelRows = 256;  // decode fewer rows on the calling thread

size_t bytes_of(RowStore::Format f, int64_t width, int64_t rope) {
  switch (f) {
    case RowStore::Format::f32: return static_cast<size_t>(width) * sizeof(float);
    case RowStore::Format::kv_fp8: return quant::kv_row_bytes(width, rope);
    case RowStore::Format::key_fp4: return quant::index_row_bytes(width);
  }
  fail("RowStore: invalid format");
}

}  // namespace

RowStore::RowStore(Format f, int64_t width, int64_t rope_dims)
    : format_(f), width_(width), rope_(rope_dims), row_bytes_(bytes_of(f, width, rope_dims)) {}

// Grows by 1/8 (not std::vector's 2x): a million-token state's entries then
// hold at most 1.125x their bytes, and growth stays amortised O(1) per row.
void RowStore::resize(int64_t n) {
  const size_t bytes = static_cast<size_t>(n) * row_bytes_;
  if (bytes > bytes_.capacity()) bytes_.reserve(std::max(bytes, bytes_.capacity() + bytes_.capacity() / 8));
  bytes_.resize(bytes);
  rows_ = n;
}

void RowStore::assign(int64_t n) {
  bytes_.clear();
  resize(n);
}

bool RowStore::operator==(const RowStore& o) const {
  if (format_ != o.format_ || width_ != o.width_ || rope_ != o.rope_ || rows_ != o.rows_) return false;
  if (rows_ == 0) return true;  // (no block: memcmp must not see null)
  if (format_ != Format::f32) return std::memcmp(data(), o.data(), bytes_.size()) == 0;
  const float* a = reinterpret_cast<const float*>(data());
  const float* b = reinterpret_cast<const float*>(o.data());
  return std::equal(a, a + rows_ * width_, b);
}

void RowStore::resize_like(const RowStore& like, int64_t n) {
  if (format_ != like.format_ || width_ != like.width_ || rope_ != like.rope_) {
    bytes_.clear();
    format_ = like.format_, width_ = like.width_, rope_ = like.rope_, row_bytes_ = like.row_bytes_;
  }
  resize(n);
}

void RowStore::put(int64_t i, float* x, float* dq) {
  uint8_t* row = data() + static_cast<size_t>(i) * row_bytes_;
  switch (format_) {
    case Format::f32:
      std::memcpy(row, x, row_bytes_);
      if (dq) std::memcpy(dq, x, row_bytes_);
      return;
    case Format::kv_fp8: return quant::kv_row_encode(x, width_, rope_, row, dq);
    case Format::key_fp4: quant::hadamard(x, width_); return quant::index_row_encode(x, width_, row, dq);
  }
}

namespace {

void decode_row(RowStore::Format f, const uint8_t* row, int64_t width, int64_t rope, float* out) {
  switch (f) {
    case RowStore::Format::f32: std::memcpy(out, row, static_cast<size_t>(width) * sizeof(float)); return;
    case RowStore::Format::kv_fp8: return quant::kv_row_decode(row, width, rope, out);
    case RowStore::Format::key_fp4: return quant::index_row_decode(row, width, out);
  }
}

}  // namespace

void RowStore::read(int64_t i, int64_t n, float* out) const {
  const uint8_t* rows = data() + static_cast<size_t>(i) * row_bytes_;
  if (format_ == Format::f32 || n < kParallelRows) {  // no thread wake-up for a copy or a few rows
    for (int64_t k = 0; k < n; ++k) decode_row(format_, rows + k * row_bytes_, width_, rope_, out + k * width_);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (int64_t k = 0; k < n; ++k) decode_row(format_, rows + k * row_bytes_, width_, rope_, out + k * width_);
}

void RowStore::gather(const int32_t* ids, int64_t n, float* out) const {
  for (int64_t k = 0; k < n; ++k)
    decode_row(format_, data() + static_cast<size_t>(ids[k]) * row_bytes_, width_, rope_, out + k * width_);
}

const float* RowStore::rows_f32(int64_t n, std::vector<float>& buf) const {
  if (format_ == Format::f32) return reinterpret_cast<const float*>(data());
  buf.resize(static_cast<size_t>(std::max<int64_t>(n, 1) * width_));
  read(0, n, buf.data());
  return buf.data();
}

void RowStore::copy_row(int64_t i, const RowStore& from, int64_t j) {
  std::memcpy(data() + static_cast<size_t>(i) * row_bytes_, from.data() + static_cast<size_t>(j) * row_bytes_,
              row_bytes_);
}

}  // namespace dsv4
