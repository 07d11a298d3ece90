// Crash-safe file writes, used for every file dsv4 writes (saved states,
// safetensors files, a synthesized model's folder, the CLI's outputs).
//
// The bytes go to a temporary file beside the target, `<target>.tmp.<pid>.<n>`;
// commit() flushes it to disk (fsync), renames it over the target and syncs the
// folder. A reader, a crash or a kill at any moment sees the old file or the
// complete new one, never a torn one; only a process killed before commit()
// leaves its temporary file behind. Every error is a dsv4::Error naming the
// target, and removes the temporary file.
#pragma once
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace dsv4 {

class AtomicFile {
 public:
  // `what` starts error messages (e.g. "save_state").
  explicit AtomicFile(std::filesystem::path target, std::string what = "write");
  ~AtomicFile();  // without commit(): closes and removes the temporary file
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  void commit();  // fsync, close, rename over the target, fsync the folder

  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& temp_path() const { return temp_; }

 private:
  [[noreturn]] void fail_io(const std::string& doing, int err);
  std::filesystem::path target_, temp_;
  std::string what_;
  std::FILE* f_ = nullptr;
  bool committed_ = false;
};

// The whole file in one call.
void write_file_atomic(const std::filesystem::path& target, std::string_view bytes, const std::string& what = "write");

}  // namespace dsv4
