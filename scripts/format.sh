#!/usr/bin/env bash
# Formats the C++ sources with .clang-format (clang-format 14, Debian's
# clang-format); --check changes nothing and fails on any file that differs (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(find include src tools reference tests bench fuzz python examples \
  \( -name '*.cpp' -o -name '*.h' \) -not -path 'tests/data/*' | sort)
if [ "${1:-}" = --check ]; then
  clang-format --dry-run --Werror "${files[@]}"
else
  clang-format -i "${files[@]}"
fi
