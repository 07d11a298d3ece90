#!/usr/bin/env bash
# Installs the Debian packages dsv4 builds, tests and benchmarks with (torch: the
# Python tests compare with the project's PyTorch layer; dsv4 imports without it;
# venv, setuptools, wheel, build: the pip and wheel installs scripts/check_packaging.sh tries;
# clang, libomp, netlib BLAS: the fuzz and ThreadSanitizer builds; llvm: fuzz coverage;
# Open MPI: context parallelism, dsv4_mpi and its tests; mpi4py for Python programs that drive it).
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  cmake make g++ pkg-config \
  libopenblas-openmp-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev \
  clang libclang-rt-14-dev clang-format libomp-dev libblas3 llvm \
  python3 python3-dev pybind11-dev python3-pybind11 python3-numpy python3-pytest python3-matplotlib \
  python3-torch libopenblas0 \
  python3-venv python3-setuptools python3-wheel python3-build \
  libopenmpi-dev openmpi-bin python3-mpi4py
