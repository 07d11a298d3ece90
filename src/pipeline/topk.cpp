// The CSA top-k: the best k of a query's indexer scores by the documented
// rule (higher score, then the lower index), without a full sort — on one
// thread (select_topk) or, for the long rows of a decode step, on all of them
// (select_topk_split). The rule is a strict total order on scores that are not
// NaN, so "the k best" is one set in one order however the work is split.
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <numeric>

#include "pipeline/pipeline.h"

namespace dsv4 {
namespace {

// Every 8th score of a row at least this long bounds its k-th best from below.
constexpr int64_t kSampleStride = 8;
// Rows shorter than this select on one thread (a parallel region costs more).
constexpr int64_t kSplitMin = int64_t{1} << 15;

// The k-th largest of scores[0, n : kSampleStride) (n / kSampleStride >= k).
float sampled_bound(const float* scores, int64_t n, int64_t k, std::vector<float>& sample) {
  sample.resize(static_cast<size_t>(n / kSampleStride));
  for (size_t j = 0; j < sample.size(); ++j) sample[j] = scores[static_cast<int64_t>(j) * kSampleStride];
  std::nth_element(sample.begin(), sample.begin() + (k - 1), sample.end(), std::greater<float>());
  return sample[static_cast<size_t>(k - 1)];
}

struct Better {
  const float* s;
  bool operator()(int32_t a, int32_t b) const { return s[a] > s[b] || (s[a] == s[b] && a < b); }
};

// One part of a split row: its samples' best (phase 1), then its candidates'
// best k, best first (phase 2).
struct alignas(64) Part {  // (its own cache lines: each thread writes its part's)
  std::vector<float> sample;
  std::vector<int32_t> idx;
  bool nan = false;
};

// Part q's samples' best min(k, count) values (any order); nan: a sample is NaN.
void part_samples(const float* scores, int64_t j0, int64_t j1, int64_t k, Part& pt) {
  pt.sample.resize(static_cast<size_t>(j1 - j0));
  float* sample = pt.sample.data();
  bool nan = false;
  for (int64_t j = j0; j < j1; ++j) {
    const float v = scores[j * kSampleStride];
    nan |= v != v;
    sample[j - j0] = v;
  }
  pt.nan = nan;
  if (nan) return;
  const auto keep = static_cast<size_t>(std::min<int64_t>(k, j1 - j0));
  std::nth_element(pt.sample.begin(), pt.sample.begin() + static_cast<std::ptrdiff_t>(keep), pt.sample.end(),
                   std::greater<float>());
  pt.sample.resize(keep);
}

// Part q's entries [i0, i1) at or above the bound, then their best k, best first.
void part_candidates(const float* scores, int64_t i0, int64_t i1, int64_t k, float bound, Part& pt) {
  std::vector<int32_t>& idx = pt.idx;
  idx.clear();
  bool nan = false;
  for (int64_t i = i0; i < i1; ++i) {
    const float v = scores[i];
    nan |= v != v;
    if (v >= bound) idx.push_back(static_cast<int32_t>(i));
  }
  pt.nan = nan;
  if (nan) return;
  const Better better{scores};
  if (static_cast<int64_t>(pt.idx.size()) > k) {
    std::nth_element(pt.idx.begin(), pt.idx.begin() + k, pt.idx.end(), better);
    pt.idx.resize(static_cast<size_t>(k));
  }
  std::sort(pt.idx.begin(), pt.idx.end(), better);
}

// The k-th best of the parts' best samples (the k-th best of all samples);
// false if a sample is NaN.
bool union_bound(const std::vector<Part>& part, int64_t k, float& bound) {
  thread_local std::vector<float> top;
  top.clear();
  for (const Part& pt : part) {
    if (pt.nan) return false;
    top.insert(top.end(), pt.sample.begin(), pt.sample.end());
  }
  std::nth_element(top.begin(), top.begin() + (k - 1), top.end(), std::greater<float>());
  bound = top[static_cast<size_t>(k - 1)];
  return true;
}

}  // namespace

void select_topk(const float* scores, int64_t n, int64_t width, int64_t out_width, int32_t* out,
                 std::vector<int32_t>& idx) {
  const Better better{scores};
  const int64_t k = std::min(width, n);
  bool cut = false;
  if (k > 0 && n / kSampleStride >= k) {  // the k best of all are among those >= the sample's k-th best
    thread_local std::vector<float> sample;
    const float bound = sampled_bound(scores, n, k, sample);
    idx.clear();
    for (int64_t i = 0; i < n; ++i)
      if (scores[i] >= bound) idx.push_back(static_cast<int32_t>(i));
    cut = static_cast<int64_t>(idx.size()) >= k;  // (not with a NaN bound)
  }
  if (!cut) {  // short rows: every entry
    idx.resize(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
  }
  if (k < static_cast<int64_t>(idx.size())) std::nth_element(idx.begin(), idx.begin() + k, idx.end(), better);
  std::sort(idx.begin(), idx.begin() + k, better);
  std::copy_n(idx.begin(), k, out);
  std::fill(out + k, out + out_width, -1);
}

// The row in one part per thread (contiguous, cut at sample boundaries): each
// part's best samples, then the bound — the k-th best of their union, which is
// the k-th best of all samples, select_topk's bound (each thread finds it) — then each part's
// candidates at or above it and their best k, then a merge of the parts'
// sorted lists. The k best of all are among the parts' k best, so the merge
// gives select_topk's result. Rows with a NaN score take select_topk itself.
void select_topk_split(const float* scores, int64_t n, int64_t width, int64_t out_width, int32_t* out,
                       std::vector<int32_t>& idx) {
  const int64_t k = std::min(width, n), samples = n / kSampleStride;
  const int parts = omp_get_max_threads();
  if (parts < 2 || n < kSplitMin || k == 0 || samples < k) return select_topk(scores, n, width, out_width, out, idx);
  thread_local std::vector<Part> part_tl;  // the caller's; the team below shares it by reference
  std::vector<Part>& part = part_tl;
  part.resize(static_cast<size_t>(parts));
  const auto first_sample = [&](int q) { return samples * q / parts; };
#pragma omp parallel num_threads(parts)
  {
#pragma omp for schedule(static)
    for (int q = 0; q < parts; ++q) part_samples(scores, first_sample(q), first_sample(q + 1), k, part[size_t(q)]);
    float bound = 0;  // each thread its own copy (the same value): no second barrier
    const bool nan = !union_bound(part, k, bound);
#pragma omp for schedule(static) nowait
    for (int q = 0; q < parts; ++q) {
      const int64_t i0 = first_sample(q) * kSampleStride, i1 = q + 1 == parts ? n : first_sample(q + 1) * kSampleStride;
      if (!nan) part_candidates(scores, i0, i1, k, bound, part[size_t(q)]);
    }
  }
  bool nan = false;
  size_t total = 0;
  for (const Part& pt : part) nan |= pt.nan, total += pt.idx.size();
  if (nan || static_cast<int64_t>(total) < k) return select_topk(scores, n, width, out_width, out, idx);
  const Better better{scores};
  std::vector<size_t> head(part.size(), 0);
  for (int64_t i = 0; i < k; ++i) {  // k-way merge of the parts' sorted lists
    size_t best = part.size();
    for (size_t q = 0; q < part.size(); ++q)
      if (head[q] < part[q].idx.size() &&
          (best == part.size() || better(part[q].idx[head[q]], part[best].idx[head[best]])))
        best = q;
    out[i] = part[best].idx[head[best]++];
  }
  std::fill(out + k, out + out_width, -1);
}

}  // namespace dsv4
