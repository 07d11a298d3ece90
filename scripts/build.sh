#!/usr/bin/env bash
# Fresh Debian machine -> Release build in ./build (library, CLI, Python package, installed
# for python3) -> `dsv4 verify` on the shipped conformance data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${DSV4_CMAKE_ARGS:-}
cmake --build build -j"$(nproc)"
# The Python package where Debian's python3 finds it: `python3 -c "import dsv4"`.
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO cmake --install build --component python
./build/dsv4 verify tests/data/conformance/*stateless*.safetensors tests/data/conformance/*cached*.safetensors
