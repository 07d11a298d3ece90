// A progress bar on stderr for long sub-commands (bench, state-size): shown once
// a run has taken more than two seconds, so short runs print nothing.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

namespace dsv4::cli {

class Progress {
 public:
  Progress(std::string what, int64_t total) : what_(std::move(what)), total_(total), start_(omp_get_wtime()) {}
  void update(int64_t done) {
    const double el = omp_get_wtime() - start_;
    if (el < 2.0) return;
    const int64_t total = std::max<int64_t>(total_, 1);
    const int width = 30, filled = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r[%s%s] %3d%% %s %lld/%lld  %.1f s", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), static_cast<int>(100 * done / total), what_.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), el);
    if (done >= total_) std::fprintf(stderr, "\n");
    shown_ = true;
  }
  ~Progress() {
    if (shown_) std::fflush(stderr);
  }

 private:
  std::string what_;
  int64_t total_;
  double start_;
  bool shown_ = false;
};

}  // namespace dsv4::cli
