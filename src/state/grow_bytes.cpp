// detail::GrowBytes (dsv4/state.h): a state store's bytes, grown without copying.
//
// A block of at least kMapBytes is its own anonymous mapping, grown by mremap,
// which moves page-table entries instead of bytes. realloc does the same only
// for blocks glibc itself mmap'd, and glibc decides that by a threshold that
// rises (up to 32 MB) each time the process frees a mapped block: after a few
// large temporaries are freed, a 64K-token layer's 9 MB of entries (or a
// 1M-token layer's 18 MB of indexer keys) can live in the heap, and a growth
// copied them and faulted in the copy (a 65,536-token 43-layer stack's growth
// step took twice a step).
// Smaller blocks, other systems, and a refused mapping (too many mappings)
// use malloc/realloc.
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "dsv4/state.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace dsv4::detail {
namespace {

constexpr size_t kMapBytes = size_t{1} << 20;

#if defined(__linux__)
size_t page_rounded(size_t n) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

// A new mapping of n bytes, or the mapping p of `old` bytes grown to n (moved
// if it must be); null where the system refuses.
void* map(void* p, size_t old, size_t n) {
  void* q = p ? mremap(p, page_rounded(old), page_rounded(n), MREMAP_MAYMOVE)
              : mmap(nullptr, page_rounded(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return q == MAP_FAILED ? nullptr : q;
}
#endif

}  // namespace

GrowBytes::GrowBytes(const GrowBytes& o) {
  reserve(o.n_);
  if (o.n_) std::memcpy(p_, o.p_, o.n_);
  n_ = o.n_;
}

GrowBytes::GrowBytes(GrowBytes&& o) noexcept : p_(o.p_), n_(o.n_), cap_(o.cap_), mapped_(o.mapped_) {
  o.p_ = nullptr, o.n_ = o.cap_ = 0, o.mapped_ = false;
}

GrowBytes& GrowBytes::operator=(const GrowBytes& o) {
  if (this != &o) *this = GrowBytes(o);
  return *this;
}

GrowBytes& GrowBytes::operator=(GrowBytes&& o) noexcept {
  std::swap(p_, o.p_), std::swap(n_, o.n_), std::swap(cap_, o.cap_), std::swap(mapped_, o.mapped_);
  return *this;
}

GrowBytes::~GrowBytes() { release(); }

void GrowBytes::release() {
#if defined(__linux__)
  if (mapped_) {
    munmap(p_, page_rounded(cap_));
    p_ = nullptr, mapped_ = false;
    return;
  }
#endif
  std::free(p_);
  p_ = nullptr;
}

void GrowBytes::reserve(size_t n) {
  if (n <= cap_) return;
#if defined(__linux__)
  if (n >= kMapBytes) {
    if (void* q = map(mapped_ ? p_ : nullptr, cap_, n)) {
      if (!mapped_ && n_) std::memcpy(q, p_, n_);  // a heap block (< kMapBytes) becomes a mapping
      if (!mapped_) std::free(p_);
      p_ = static_cast<uint8_t*>(q), cap_ = n, mapped_ = true;
      return;
    }
    if (mapped_) {  // the mapping cannot grow: a heap block from here on
      void* h = std::malloc(n);
      if (!h) throw std::bad_alloc();
      std::memcpy(h, p_, n_);
      release();
      p_ = static_cast<uint8_t*>(h), cap_ = n;
      return;
    }
  }
#endif
  void* q = std::realloc(p_, n);
  if (!q) throw std::bad_alloc();
  p_ = static_cast<uint8_t*>(q), cap_ = n;
}

void GrowBytes::resize(size_t n) {
  reserve(n);
  if (n > n_) std::memset(p_ + n_, 0, n - n_);
  n_ = n;
}

}  // namespace dsv4::detail
