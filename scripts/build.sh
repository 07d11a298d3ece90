#!/usr/bin/env bash
# Fresh Debian machine -> Release build in ./build -> `dsv4 verify` on the shipped conformance data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${DSV4_CMAKE_ARGS:-}
cmake --build build -j"$(nproc)"
./build/dsv4 verify tests/data/conformance/*stateless*.safetensors tests/data/conformance/*cached*.safetensors
