// Runs a conformance file (format: tests/data/conformance/README.md) through the fast
// path and compares every output with |ours - ref| <= atol + rtol·|ref| and
// the CSA top-k as sets. Used by `dsv4 verify` and by the tests.
#pragma once
#include <cstdint>
#include <filesystem>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "dsv4/tensor.h"

namespace dsv4 {

struct CaseReport {
  std::string name;  // file stem
  bool passed = false;
  double max_abs = 0.0;               // over every compared value
  double max_rel = 0.0;               // |ours - ref| / |ref| over values with |ref| >= 1e-3
  int64_t compared = 0;               // values compared
  std::vector<std::string> failures;  // one line per failed check (tensor and worst element)
};

struct Tolerance {
  double atol = 1e-5;
  double rtol = 1e-5;
};

// The entries one row of top-k indices selects, as a set (-1 padding dropped):
// top-k results agree when these sets do, whatever the order within a row.
std::set<int64_t> topk_set(std::span<const int64_t> row);
// Row `row` of a top-k tensor [..., k] (rows counted over the leading axes).
std::set<int64_t> topk_set(const TensorI64& topk, int64_t row);

// Compares ours [n] with ref elementwise into rep (max_abs, max_rel, compared;
// a failure line naming `what` and the worst element).
void compare(CaseReport& rep, const std::string& what, const Tensor& ref, const float* ours, int64_t n,
             Tolerance tol = {});

// Never throws for a bad file: the error becomes a failure of the case.
CaseReport verify_case(const std::filesystem::path& file, Tolerance tol = {});

}  // namespace dsv4
