// One exception type for every user-facing failure: the message names the
// file, tensor, key or shape that is wrong.
#pragma once
#include <stdexcept>
#include <string>

namespace dsv4 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] void fail(const std::string& what);

}  // namespace dsv4
