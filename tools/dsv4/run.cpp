// Placeholder: filled by its own issue.
#include "commands.h"

namespace dsv4::cli {

void add_run(CLI::App& app, int& rc) {
  (void)app;
  (void)rc;
}

}  // namespace dsv4::cli
