// Quantising projection matrices to the checkpoint dtypes (benchmarks and
// synthetic model folders); the loader keeps real checkpoints as they are.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/dtype.h"
#include "dsv4/weights.h"
#include "io/stored_weights.h"
#include "ops/quant.h"

namespace dsv4 {
StoredMatrix quantize_fp8_blocks(const Tensor& w, bool ue8m0) {
  StoredMatrix m{DType::F8_E4M3, w.shape, std::vector<std::byte>(w.data.size()), Tensor(scale_grid(w.shape))};
  const int64_t rows = w.dim(0), cols = w.dim(1), gc = m.scale.dim(1);
  const auto block = [&](int64_t i, int64_t j) -> float& {
    return m.scale.data[(i / kScaleBlock) * gc + j / kScaleBlock];
  };
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j0 = 0; j0 < cols; j0 += kScaleBlock) {  // the block's running max in a register
      float mx = block(i, j0);
      for (int64_t j = j0; j < std::min(cols, j0 + kScaleBlock); ++j)
        mx = std::max(mx, std::fabs(w.data[i * cols + j]));
      block(i, j0) = mx;
    }
  for (float& s : m.scale.data) {
    s = s > 0 ? s / 448.0f : 1.0f;
    if (ue8m0) s = quant::ceil_pow2(s);
  }
  for (int64_t i = 0; i < rows; ++i) {
    const float* x = &w.data[i * cols];
    std::byte* out = &m.data[i * cols];
    for (int64_t j0 = 0; j0 < cols; j0 += kScaleBlock) {
      const float s = block(i, j0);
      const int64_t j1 = std::min(cols, j0 + kScaleBlock);
      if (ue8m0 && s >= 0x1p-126f) {  // x / 2^k and x · 2^-k (2^-k exact) are one exact value, rounded once
        const float inv = 1.0f / s;
        for (int64_t j = j0; j < j1; ++j) out[j] = std::byte(f32_to_e4m3fn(x[j] * inv));
      } else {
        for (int64_t j = j0; j < j1; ++j) out[j] = std::byte(f32_to_e4m3fn(x[j] / s));
      }
    }
  }
  return m;
}

StoredMatrix quantize_bf16(const Tensor& w) {
  StoredMatrix m{DType::BF16, w.shape, std::vector<std::byte>(w.data.size() * 2), Tensor()};
  for (size_t i = 0; i < w.data.size(); ++i) {
    const uint16_t b = f32_to_bf16(w.data[i]);
    std::memcpy(m.data.data() + 2 * i, &b, 2);
  }
  return m;
}

std::vector<NamedTensor> checkpoint_tensors(const std::string& name, const std::string& scale_name,
                                            const StoredMatrix& m, DType scale_dtype) {
  std::vector<NamedTensor> out{NamedTensor{name, m.dtype, m.shape, m.data}};
  if (m.dtype != DType::F8_E4M3) return out;
  NamedTensor s = named(scale_name, m.scale);
  if (scale_dtype == DType::F8_E8M0) {
    s.dtype = DType::F8_E8M0;
    s.bytes.resize(m.scale.data.size());
    for (size_t i = 0; i < m.scale.data.size(); ++i) {
      const float v = m.scale.data[i];
      if (!(v > 0) || quant::ceil_pow2(v) != v)
        fail(name + ": scale " + std::to_string(v) + " is not a power of two (UE8M0)");
      s.bytes[i] = std::byte(static_cast<uint8_t>(quant::ceil_pow2_exp(v) + 127));
    }
  }
  out.push_back(std::move(s));
  return out;
}

void store_as_released(LayerWeights& w, LayerType t) {
  for (const WeightEntry& e : kWeightTable) {
    if (!layer_has(t, e.part) || !is_projection(e.role)) continue;
    Tensor& x = weight(w, e.id);
    w.stored[std::string(e.name)] = e.released == DType::BF16 ? quantize_bf16(x) : quantize_fp8_blocks(x, true);
    x = Tensor();
  }
}

}  // namespace dsv4
