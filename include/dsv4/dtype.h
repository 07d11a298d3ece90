// Element types of stored tensors (the safetensors dtype strings).
#pragma once
#include <cstddef>
#include <optional>
#include <string_view>

namespace dsv4 {

// Safetensors dtype strings: "F32", "I64", "BF16", "F16", "F8_E4M3" (OCP
// E4M3FN) and "F8_E8M0" (power-of-two block scales) are read; the others are
// accepted in headers (sizes checked) but not decoded.
enum class DType {
  F32,
  I64,
  BF16,
  F16,
  F8_E4M3,
  F8_E8M0,
  // The rest of the safetensors dtypes: listed and skipped (e.g. the released
  // checkpoints' experts as I8 FP4 packs), an error only when read.
  F64,
  I32,
  I16,
  I8,
  U64,
  U32,
  U16,
  U8,
  BOOL,
  F8_E5M2
};

std::string_view dtype_name(DType t);
std::optional<DType> parse_dtype_name(std::string_view name);  // "F32", "BF16", ...
size_t dtype_size(DType t);

}  // namespace dsv4
