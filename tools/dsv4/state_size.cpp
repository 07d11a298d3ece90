// Placeholder: filled by its own issue.
#include "commands.h"

namespace dsv4::cli {

void add_state_size(CLI::App& app, int& rc) {
  (void)app;
  (void)rc;
}

}  // namespace dsv4::cli
