// Sub-commands of the dsv4 tool.
#pragma once
#include <string>
#include <vector>

namespace dsv4::cli {

// Prints one line per case and, last, exactly "N passed, M failed". Returns M.
int verify(const std::vector<std::string>& files, bool verbose);

}  // namespace dsv4::cli
