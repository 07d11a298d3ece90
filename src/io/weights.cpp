// Layer weights by their Hugging Face names; shape and finiteness checks;
// FP8 block scales.
#include "dsv4/weights.h"

#include <algorithm>
#include <cmath>

#include "common/dtype.h"
#include "io/stored_weights.h"

namespace dsv4 {

std::string canonical_name(const std::string& name) {
  static const std::string bare = "compressor.indexer.weights_proj.weight";
  if (name.ends_with(bare) && (name.size() == bare.size() || name[name.size() - bare.size() - 1] == '.'))
    return name.substr(0, name.size() - bare.size()) + "compressor.indexer.scorer.weights_proj.weight";
  return name;
}

Shape scale_grid(const Shape& weight) {
  if (weight.size() != 2) fail("block scales need a 2-D weight, got shape " + shape_str(weight));
  return {(weight[0] + kScaleBlock - 1) / kScaleBlock, (weight[1] + kScaleBlock - 1) / kScaleBlock};
}

void apply_block_scales(Tensor& w, const Tensor& s) {
  const Shape grid = scale_grid(w.shape);
  if (s.shape != grid)
    fail("scale grid has shape " + shape_str(s.shape) + ", expected " + shape_str(grid) + " for weight " +
         shape_str(w.shape));
  const int64_t rows = w.dim(0), cols = w.dim(1);
  for (int64_t i = 0; i < rows; ++i) {
    float* row = w.ptr() + i * cols;
    const float* srow = s.ptr() + (i / kScaleBlock) * grid[1];
    for (int64_t j = 0; j < cols; ++j) row[j] *= srow[j / kScaleBlock];
  }
}

std::string_view weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::f32: return "f32";
    case WeightFormat::bf16: return "bf16";
    case WeightFormat::native: return "native";
  }
  return "?";
}

WeightFormat parse_weight_format(std::string_view s) {
  for (WeightFormat f : {WeightFormat::f32, WeightFormat::bf16, WeightFormat::native})
    if (s == weight_format_name(f)) return f;
  fail("weights format: expected 'f32', 'bf16' or 'native', got '" + std::string(s) + "'");
}

Tensor StoredMatrix::dequantised() const {
  Tensor out(shape);
  decode_to_f32(dtype, data, out.ptr());
  if (dtype == DType::F8_E4M3) apply_block_scales(out, scale);
  return out;
}

namespace {

// A stored matrix has the expected shape, a weight dtype, its bytes, its scales,
// and only finite values (checked on the decoded values, scale applied).
void validate_stored(const std::string& name, const StoredMatrix& m, const Shape& expected) {
  const std::string at = "weight '" + name + "' (" + std::string(dtype_name(m.dtype)) + ")";
  if (m.dtype != DType::F32 && m.dtype != DType::BF16 && m.dtype != DType::F16 && m.dtype != DType::F8_E4M3)
    fail(at + ": not a weight dtype (F32, BF16, F16, F8_E4M3)");
  if (m.shape != expected) fail(at + " has shape " + shape_str(m.shape) + ", expected " + shape_str(expected));
  if (m.data.size() != static_cast<size_t>(numel(m.shape)) * dtype_size(m.dtype))
    fail(at + ": " + std::to_string(m.data.size()) + " bytes for shape " + shape_str(m.shape));
  if (m.dtype == DType::F8_E4M3 && m.scale.shape != scale_grid(m.shape))
    fail(at + ": scale grid has shape " + shape_str(m.scale.shape) + ", expected " + shape_str(scale_grid(m.shape)));
  if (m.dtype != DType::F8_E4M3 && !m.scale.empty()) fail(at + ": block scales given for a non-FP8 weight");
  // Decoded a slice at a time: a V4 matrix is up to 128 MB as fp32.
  const size_t esize = dtype_size(m.dtype), n = m.data.size() / esize, step = 1 << 16;
  std::vector<float> buf(std::min(n, step));
  int64_t bad = 0;
  for (size_t i = 0; i < n; i += step) {
    const size_t k = std::min(step, n - i);
    decode_to_f32(m.dtype, std::span(m.data).subspan(i * esize, k * esize), buf.data());
    bad += std::count_if(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(k),
                         [](float x) { return !std::isfinite(x); });
  }
  bad += std::count_if(m.scale.data.begin(), m.scale.data.end(), [](float x) { return !std::isfinite(x); });
  if (bad) fail(at + " has " + std::to_string(bad) + " non-finite value(s) or scale(s)");
}

}  // namespace

void validate_weights(const LayerWeights& w, const Config& c, LayerType t) {
  if (t != LayerType::sliding && !w.compressor)
    fail(std::string(layer_type_name(t)) + " layer: compressor weights are missing");
  if (t == LayerType::csa && !w.indexer) fail("compressed_sparse_attention layer: indexer weights are missing");
  for (const auto& [name, m] : w.stored) {
    const WeightEntry* e = find_weight(name);
    if (!e || e->name != name || !is_projection(e->role) || !layer_has(t, e->part))
      fail("stored weight '" + name + "' is not a projection matrix of a " + std::string(layer_type_name(t)) +
           " layer");
  }
  for (const WeightSpec& e : weight_specs(c, t)) {
    if (auto it = w.stored.find(e.name); it != w.stored.end()) {
      validate_stored(e.name, it->second, e.shape);
      continue;
    }
    const Tensor& x = weight(w, e.id);
    if (x.data.empty()) {
      if (numel(e.shape) == 0) continue;
      fail("weight '" + e.name + "' is missing (expected shape " + shape_str(e.shape) + ")");
    }
    if (x.shape != e.shape)
      fail("weight '" + e.name + "' has shape " + shape_str(x.shape) + ", expected " + shape_str(e.shape));
    if (numel(x.shape) != x.numel())
      fail("weight '" + e.name + "' holds " + std::to_string(x.numel()) + " values for shape " + shape_str(x.shape));
    int64_t bad = 0;
    for (float v : x.data) bad += !std::isfinite(v);
    if (bad) fail("weight '" + e.name + "' has " + std::to_string(bad) + " non-finite value(s)");
  }
}

LayerWeights load_layer_weights(const SafeTensors& file, const Config& c, LayerType t, const std::string& prefix) {
  LayerWeights w = empty_weights(t);
  for_each_weight(w, c, t, [&](const WeightSpec& e, Tensor& x) {
    const std::string full = prefix + e.name;
    if (!file.contains(full))
      fail(file.label() + ": tensor '" + full + "' is missing (needed by a " + std::string(layer_type_name(t)) +
           " layer)");
    x = file.f32(full);
    if (x.shape != e.shape)
      fail(file.label() + ": tensor '" + full + "' has shape " + shape_str(x.shape) + ", expected " +
           shape_str(e.shape));
  });
  validate_weights(w, c, t);
  return w;
}

}  // namespace dsv4
