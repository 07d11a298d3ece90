// Memory-mapped safetensors reader (validates the whole header up front) and
// a small writer. Every error names the file and, where there is one, the tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dsv4/dtype.h"
#include "dsv4/tensor.h"

namespace dsv4 {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets relative to the data area
  uint64_t end = 0;
};

class SafeTensors {
 public:
  // Maps the file and validates: header length within the file, valid JSON,
  // no tensor listed twice, known dtypes, shape x element size == byte span, spans
  // that tile the data area (no overlap, hole or trailing byte). Header text in
  // error messages is made printable (invalid UTF-8 -> U+FFFD, control escapes).
  static SafeTensors open(const std::filesystem::path& path);
  // Same checks over bytes already in memory (fuzzing, tests). The bytes must
  // outlive the object. `label` stands in for the file name in errors.
  static SafeTensors parse(std::span<const std::byte> bytes, std::string label);

  const std::string& label() const { return label_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws if missing
  std::vector<std::string> names() const;                 // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Metadata value; throws naming the key if it is missing.
  const std::string& meta(const std::string& key) const;

  std::span<const std::byte> bytes(const std::string& name) const;
  // Copy out as fp32 (converting any float dtype) / int64; throws for any other dtype.
  Tensor f32(const std::string& name) const;
  TensorI64 i64(const std::string& name) const;

 private:
  std::shared_ptr<void> mapping_;    // keeps the mmap alive
  std::span<const std::byte> data_;  // the data area
  std::string label_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A sharded checkpoint's `model.safetensors.index.json`: its `weight_map`,
// tensor name -> shard file name (a plain file name in the same folder).
// Rejects bad JSON, a missing/empty weight_map, non-string or path-like shard
// names and a tensor listed twice. Errors start with `where` (the index file).
std::map<std::string, std::string> parse_safetensors_index(std::string_view json_text, const std::string& where);

// Writer: tensors are laid out in the given order.
struct NamedTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::vector<std::byte> bytes;
};
NamedTensor named(const std::string& name, const Tensor& t);
NamedTensor named(const std::string& name, const TensorI64& t);
void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dsv4
