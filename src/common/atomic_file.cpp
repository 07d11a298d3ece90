#include "dsv4/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "dsv4/error.h"

namespace dsv4 {
namespace {

std::filesystem::path temp_beside(const std::filesystem::path& target) {
  static std::atomic<unsigned> counter{0};
  std::filesystem::path tmp = target;
  tmp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  return tmp;
}

// The rename itself is durable only once the folder's entry is on disk.
void sync_folder(const std::filesystem::path& target) {
  const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: the file itself is synced
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path target, std::string what)
    : target_(std::move(target)), what_(std::move(what)) {
  // x: never write into a file that is there (a killed writer's leftover with a recycled pid: next name)
  for (int tries = 0; !f_ && tries < 100; ++tries) {
    temp_ = temp_beside(target_);
    f_ = std::fopen(temp_.c_str(), "wbx");
    if (!f_ && errno != EEXIST) break;
  }
  if (!f_) fail(what_ + ": '" + target_.string() + "': cannot open for writing: " + std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove(temp_, ec);
  }
}

void AtomicFile::fail_io(const std::string& doing, int err) {
  if (f_) std::fclose(f_);
  f_ = nullptr;
  std::error_code ec;
  std::filesystem::remove(temp_, ec);
  fail(what_ + ": '" + target_.string() + "': " + doing + ": " + std::strerror(err));
}

void AtomicFile::write(const void* data, size_t n) {
  if (!f_) fail(what_ + ": '" + target_.string() + "': write after commit or failure");
  if (n && std::fwrite(data, 1, n, f_) != n) fail_io("write failed", errno);
}

void AtomicFile::commit() {
  if (!f_) fail(what_ + ": '" + target_.string() + "': commit after commit or failure");
  if (std::fflush(f_) != 0 || std::ferror(f_)) fail_io("write failed", errno);
  if (::fsync(::fileno(f_)) != 0) fail_io("fsync failed", errno);
  const int closed = std::fclose(f_);
  f_ = nullptr;
  if (closed != 0) fail_io("close failed", errno);
  if (std::rename(temp_.c_str(), target_.c_str()) != 0) fail_io("cannot rename the temporary file over it", errno);
  committed_ = true;
  sync_folder(target_);
}

void write_file_atomic(const std::filesystem::path& target, std::string_view bytes, const std::string& what) {
  AtomicFile f(target, what);
  f.write(bytes);
  f.commit();
}

}  // namespace dsv4
