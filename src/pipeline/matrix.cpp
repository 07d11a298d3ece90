// Packed weight matrices: row segments in their dtypes, and the one entry
// point the stages use to multiply by them (linear).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <utility>
#include <vector>

#include "common/dtype.h"
#include "io/stored_weights.h"
#include "ops/blas.h"
#include "pipeline/pipeline.h"

namespace dsv4 {

size_t Matrix::Segment::bytes() const {
  return f32.size() * sizeof(float) + half.size() * sizeof(uint16_t) + fp8.size() + scale.size() * sizeof(float);
}

size_t Matrix::bytes() const {
  size_t n = 0;
  for (const Segment& s : segs) n += s.bytes();
  return n;
}

namespace {

// The segment new rows of `dtype` go to: the last one if it has that dtype
// (FP8 only at a 128-row block boundary, so its scale grid stays one grid).
Matrix::Segment& tail_for(Matrix& m, DType dtype, int64_t cols) {
  if (m.rows > 0 && cols != m.cols)
    fail("packing weights: " + std::to_string(cols) + " columns after " + std::to_string(m.cols));
  m.cols = cols;
  const bool reuse = !m.segs.empty() && m.segs.back().dtype == dtype &&
                     (dtype != DType::F8_E4M3 || m.segs.back().rows % kScaleBlock == 0);
  if (!reuse) {
    m.segs.emplace_back();
    m.segs.back().row0 = m.rows, m.segs.back().dtype = dtype;
  }
  return m.segs.back();
}

}  // namespace

void Matrix::append(const Tensor& w) {
  Segment& s = tail_for(*this, DType::F32, w.dim(1));
  s.f32.insert(s.f32.end(), w.data.begin(), w.data.end());
  s.rows += w.dim(0), rows += w.dim(0);
}

void Matrix::append(const StoredMatrix& w) {
  const int64_t n = w.shape.at(0);
  if (w.dtype == DType::F32) {
    Tensor t(w.shape);
    std::memcpy(t.ptr(), w.data.data(), w.data.size());
    return append(t);
  }
  Segment& s = tail_for(*this, w.dtype, w.shape.at(1));
  if (w.dtype == DType::F8_E4M3) {
    s.fp8.resize(s.fp8.size() + w.data.size());
    std::memcpy(s.fp8.data() + s.fp8.size() - w.data.size(), w.data.data(), w.data.size());
    for (float f : w.scale.data) {  // the kernels multiply by 256·scale (ops/weight_decode.h)
      if (!std::isfinite(f * 256.0f))
        fail("packing weights: FP8 block scale " + std::to_string(f) + " is out of range");
      s.scale.push_back(f);
    }
  } else {  // BF16, F16
    s.half.resize(s.half.size() + w.data.size() / 2);
    std::memcpy(s.half.data() + s.half.size() - w.data.size() / 2, w.data.data(), w.data.size());
  }
  s.rows += n, rows += n;
}

void Matrix::to_bf16() {
  for (Segment& s : segs) {
    if (s.dtype != DType::F32) continue;
    s.half.resize(s.f32.size());
    for (size_t i = 0; i < s.f32.size(); ++i) s.half[i] = f32_to_bf16(s.f32[i]);
    std::vector<float>().swap(s.f32);
    s.dtype = DType::BF16;
  }
}

namespace {

// Weight rows [r0, r1) of segment s (r0 relative to the segment).
WeightRows rows_of(const Matrix::Segment& s, int64_t local, int64_t k) {
  WeightRows b;
  b.dtype = s.dtype, b.ld = k;
  switch (s.dtype) {
    case DType::F32: b.data = s.f32.data() + local * k; break;
    case DType::F8_E4M3:
      b.data = s.fp8.data() + local * k;
      b.scale = s.scale.data(), b.scale_ld = (k + kScaleBlock - 1) / kScaleBlock, b.row_base = local;
      break;
    default: b.data = s.half.data() + local * k; break;
  }
  return b;
}

struct Part {
  WeightRows b;
  int64_t n = 0;    // weight rows
  int64_t col = 0;  // first output column
};

// The rows [w_row0, w_row0 + n) of each segment of w.
std::vector<Part> parts_of(const Matrix& w, int64_t w_row0, int64_t n) {
  std::vector<Part> parts;
  for (const Matrix::Segment& s : w.segs) {
    const int64_t r0 = std::max(w_row0, s.row0), r1 = std::min(w_row0 + n, s.row0 + s.rows);
    if (r0 < r1) parts.push_back({rows_of(s, r0 - s.row0, w.cols), r1 - r0, r0 - w_row0});
  }
  return parts;
}

}  // namespace

size_t RowTiles::add(const std::vector<RowGroup>& groups, const float* a, int64_t lda, const Matrix& w, int64_t w_row0,
                     int64_t n, float* c, int64_t ldc) {
  const std::vector<Part> parts = parts_of(w, w_row0, n);
  for (const RowGroup& g : groups)
    if (g.rowwise)
      for (const Part& p : parts)
        for (int64_t j = 0; j < p.n; j += kRowsPerTile)
          tiles_.push_back({a + g.row0 * lda, c + g.row0 * ldc + p.col, lda, ldc, g.rows, w.cols, j,
                            std::min(p.n, j + kRowsPerTile), p.b});
  return tiles_.size();
}

void RowTiles::compute(size_t t) const {
  const Tile& tl = tiles_[t];
  gemm_nt_rows_w_range(tl.rows, tl.j0, tl.j1, tl.k, tl.a, tl.lda, tl.b, tl.c, tl.ldc);
}

void RowTiles::share() const {
#pragma omp for schedule(static)
  for (size_t t = 0; t < tiles_.size(); ++t) compute(t);
}

// The row-invariant groups' tiles of every part in one parallel region (a
// decode step pays one fork/join per matrix, not per segment); the BLAS
// groups' in one per part.
void linear(const std::vector<RowGroup>& groups, int64_t n, const float* a, int64_t lda, const Matrix& w,
            int64_t w_row0, float* c, int64_t ldc) {
  RowTiles tiles;
  if (tiles.add(groups, a, lda, w, w_row0, n, c, ldc) > 0) {
#pragma omp parallel
    tiles.share();
  }
  std::vector<RowBlock> blocks;
  for (const RowGroup& g : groups)
    if (!g.rowwise) blocks.push_back({g.row0, g.rows});
  if (blocks.empty()) return;
  for (const Part& p : parts_of(w, w_row0, n)) gemm_nt_w_blocks(blocks, p.n, w.cols, a, lda, p.b, c + p.col, ldc);
}

RowStream::RowStream(const std::vector<RowGroup>& groups, const float* a, int64_t lda, const Matrix& w, float* c,
                     int64_t ldc)
    : groups_(groups), a_(a), lda_(lda), w_(w), c_(c), ldc_(ldc) {
  for (const RowGroup& g : groups)
    if (!g.rowwise) fail("RowStream: a group of " + std::to_string(g.rows) + " rows is not row-invariant");
}

size_t RowStream::add(int64_t w_row0, int64_t n) {
  return tiles_.add(groups_, a_, lda_, w_, w_row0, n, c_ + w_row0, ldc_);
}

// The side task runs on the calling thread (its thread-local scratch is the
// caller's), its own parallel loops there alone (a nested region); the other
// threads take tiles meanwhile, the caller joins them when done. Each output
// row is one tile's dot products whichever thread takes it: linear()'s bits.
void RowStream::run(const std::function<void()>& side, size_t need) {
  std::atomic<bool> side_done{false};
  std::exception_ptr failed;
#pragma omp parallel
  {
    if (omp_get_thread_num() == 0) {
      try {
        omp_set_num_threads(1);  // were nesting on (this implicit task's setting only)
        side();
      } catch (...) {
        failed = std::current_exception();
      }
      side_done.store(true, std::memory_order_release);
    }
    // Past `need` only while the side runs; a claimed tile is always computed.
    while (!side_done.load(std::memory_order_acquire) || next_.load(std::memory_order_relaxed) < need) {
      const size_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= tiles_.size()) break;
      tiles_.compute(t);
    }
  }
  if (failed) std::rethrow_exception(failed);
}

void linear(const RowGroup& g, int64_t n, const float* a, int64_t lda, const Matrix& w, int64_t w_row0, float* c,
            int64_t ldc) {
  linear(std::vector<RowGroup>{g}, n, a, lda, w, w_row0, c, ldc);
}

const float* Matrix::dense(int64_t row0, int64_t n, std::vector<float>& buf) const {
  for (const Segment& s : segs)
    if (s.dtype == DType::F32 && s.row0 <= row0 && row0 + n <= s.row0 + s.rows)
      return s.f32.data() + (row0 - s.row0) * cols;
  buf.resize(static_cast<size_t>(n * cols));
  for (const Segment& s : segs) {
    const int64_t r0 = std::max(row0, s.row0), r1 = std::min(row0 + n, s.row0 + s.rows);
    if (r0 < r1) widen_rows(rows_of(s, r0 - s.row0, cols), r1 - r0, cols, buf.data() + (r0 - row0) * cols);
  }
  return buf.data();
}

}  // namespace dsv4
