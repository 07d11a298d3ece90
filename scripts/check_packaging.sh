#!/usr/bin/env bash
# dsv4 taken on as a dependency, outside the source tree (CI runs this after
# scripts/build.sh; it needs the Release build in ./build):
#   1. `cmake --install build` into a prefix; tests/consumer built against it with
#      find_package(dsv4) and with pkg-config, and run on a conformance file;
#      with MPI (DSV4_MPI in the build): mpi_consumer with find_package(dsv4 COMPONENTS mpi) and
#      with pkg-config dsv4-mpi, on 2 ranks;
#   2. tests/consumer configured with add_subdirectory: the library is its only dsv4 target;
#   3. `pip install --no-build-isolation .` into a venv; import dsv4 and run a layer from /;
#      with MPI: examples/context_parallel.py on 2 ranks with that package;
#   4. `python3 -m build --wheel --no-isolation`; the wheel into a fresh venv; the same.
# Offline: Debian's python3 with --system-site-packages for NumPy, pip --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/dsv4-packaging.XXXXXX)
trap 'rm -rf "$work"' EXIT
case_file=$root/tests/data/conformance/small_csa_stateless_s37.safetensors
start=$SECONDS
step() { echo "== $* ($((SECONDS - start)) s)"; }

step "cmake --install build --prefix PREFIX"
cmake --install build --prefix "$work/prefix" >/dev/null
step "tests/consumer with find_package(dsv4)"
cmake -S tests/consumer -B "$work/cmake" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/cmake" >/dev/null
(cd "$work" && ./cmake/consumer "$case_file")

if grep -q '^DSV4_MPI:BOOL=ON' build/CMakeCache.txt; then
  step "tests/consumer with find_package(dsv4 COMPONENTS mpi), 2 ranks"
  cmake -S tests/consumer -B "$work/cmake-mpi" -DCMAKE_PREFIX_PATH="$work/prefix" -DDSV4_CONSUMER_MPI=ON >/dev/null
  cmake --build "$work/cmake-mpi" >/dev/null
  (cd "$work" && OMP_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np 2 ./cmake-mpi/mpi_consumer "$case_file")
fi

step "tests/consumer with pkg-config"
pc_dir=$(dirname "$(find "$work/prefix" -name dsv4.pc)")
# shellcheck disable=SC2046  # pkg-config prints several words
c++ -std=c++20 -O2 tests/consumer/consumer.cpp -o "$work/pc_consumer" $(PKG_CONFIG_PATH=$pc_dir pkg-config --cflags --libs dsv4)
(cd "$work" && ./pc_consumer "$case_file")
if grep -q '^DSV4_MPI:BOOL=ON' build/CMakeCache.txt; then
  step "tests/consumer/mpi_consumer with pkg-config dsv4-mpi, 2 ranks"
  # shellcheck disable=SC2046
  c++ -std=c++20 -O2 tests/consumer/mpi_consumer.cpp -o "$work/pc_mpi_consumer" \
    $(PKG_CONFIG_PATH=$pc_dir pkg-config --cflags --libs dsv4-mpi)
  (cd "$work" && OMP_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np 2 ./pc_mpi_consumer "$case_file")
fi

step "tests/consumer with add_subdirectory (configure): only the library"
cmake -S tests/consumer -B "$work/sub" -DDSV4_SOURCE_DIR="$root" >/dev/null
targets=$(cmake --build "$work/sub" --target help | sed -n 's/^\.\.\. \([^ ]*\).*/\1/p')
for t in dsv4 consumer; do grep -qx "$t" <<<"$targets" || { echo "no target $t"; exit 1; }; done
if grep -E '^dsv4_(cli|tests|python|kernels_bench|quickstart)$' <<<"$targets"; then echo "built more than the library"; exit 1; fi

step "pip install --no-build-isolation . (a venv)"
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/pip" install --no-build-isolation --no-index -q .
(cd / && "$work/venv/bin/python" "$root/tests/consumer/run_layer.py" "$case_file")
if grep -q '^DSV4_MPI:BOOL=ON' build/CMakeCache.txt; then  # pip's CMake build finds MPI too
  step "the pip-installed package with MPI: examples/context_parallel.py on 2 ranks"
  OMP_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np 2 "$work/venv/bin/python" examples/context_parallel.py
fi

step "python3 -m build --wheel --no-isolation; the wheel in a fresh venv"
/usr/bin/python3 -m build --wheel --no-isolation --outdir "$work/dist" >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log"; exit 1; }
/usr/bin/python3 -m venv --system-site-packages "$work/venv2"
"$work/venv2/bin/pip" install --no-index -q "$work"/dist/dsv4-*.whl
(cd / && "$work/venv2/bin/python" "$root/tests/consumer/run_layer.py" "$case_file")
step "packaging checks passed"
