#!/usr/bin/env bash
# libFuzzer (ASan + UBSan) on the safetensors header parser, the config /
# index JSON readers and load_state: builds build-fuzz/ with clang, runs each target for
# FUZZ_SECONDS (default 60) from the seed corpora, exits non-zero on any
# crash, leak or sanitizer report (the reproducer lands in build-fuzz/artifacts/).
# The load_state seeds are real save_state files, written by the main build's
# dsv4_state_seeds (fuzz/state_seeds.cpp; built here if missing).
#
# FUZZ_COVERAGE=1: only load_state, built with clang's source-based coverage
# in build-fuzzcov/, then the branch coverage of load_state and the functions it
# runs (llvm-profdata, llvm-cov, scripts/fuzz_coverage.py) that FUZZ_SECONDS of fuzzing reached.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
cov=${FUZZ_COVERAGE:-0}
B=build-fuzz
targets="fuzz_safetensors fuzz_json fuzz_state"
extra=()
if [ "$cov" = 1 ]; then
  B=build-fuzzcov targets=fuzz_state
  extra=("-DCMAKE_CXX_FLAGS=-fprofile-instr-generate -fcoverage-mapping"
         "-DCMAKE_EXE_LINKER_FLAGS=-fprofile-instr-generate -fcoverage-mapping")
fi

cmake -S . -B $B -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSV4_FUZZ=ON \
  -DDSV4_BUILD_TESTS=OFF -DDSV4_BUILD_BENCH=OFF -DDSV4_NATIVE_ISA=OFF -DDSV4_WERROR=ON "${extra[@]}" >/dev/null
cmake --build $B -j"$(nproc)" --target $targets

# Seeds: every conformance header (data cut off), the smallest whole
# conformance file, and tiny files of every dtype.
seeds=$B/seeds/safetensors
rm -rf "$seeds" && mkdir -p "$seeds" $B/corpus/safetensors $B/corpus/json $B/artifacts
for f in tests/data/conformance/*.safetensors; do
  n=$(od -An -t u8 -N8 "$f" | tr -d ' ')
  head -c $((8 + n)) "$f" > "$seeds/header_$(basename "$f")"
done
cp tests/data/conformance/small_swa_stateless_s1.safetensors "$seeds/"
tiny() {  # tiny NAME HEADER DATA(printf escapes): 8-byte little-endian length, header, data
  local h=$2 n=${#2}
  { printf "$(printf '\\x%02x\\x%02x\\x00\\x00\\x00\\x00\\x00\\x00' $((n & 255)) $((n >> 8)))"
    printf '%s' "$h"; printf "$3"; } > "$seeds/$1"
}
tiny f32 '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' '\x00\x00\x80\x3f'
tiny mixed '{"__metadata__":{"k":"v"},"q":{"dtype":"F8_E4M3","shape":[2,2],"data_offsets":[0,4]},"s":{"dtype":"BF16","shape":[1,1],"data_offsets":[4,6]},"h":{"dtype":"F16","shape":[1],"data_offsets":[6,8]},"e":{"dtype":"F8_E8M0","shape":[],"data_offsets":[8,9]},"i":{"dtype":"I64","shape":[0,3],"data_offsets":[9,9]}}' \
  '\x38\x7e\x7f\x81\x80\x3f\x00\x3c\x7f'

# load_state seeds: real save_state files (every layer type, both numerics, empty to
# past the window with entries), each behind the harness's mode byte.
state_seeds=$B/seeds/state
rm -rf "$state_seeds" && mkdir -p $B/corpus/state
[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target dsv4_state_seeds >/dev/null
./build/tests/dsv4_state_seeds "$state_seeds"

if [ "$cov" = 1 ]; then
  rm -rf $B/corpus/state/* $B/*.profraw
  LLVM_PROFILE_FILE=$B/state.profraw $B/fuzz/fuzz_state -max_total_time="$secs" -print_final_stats=1 \
    $B/corpus/state "$state_seeds"
  llvm-profdata merge -o $B/state.profdata $B/state.profraw
  llvm-cov export $B/fuzz/fuzz_state -instr-profile=$B/state.profdata | python3 scripts/fuzz_coverage.py
  exit 0
fi

status=0
run() {  # run TARGET DICT SEEDS...
  local t=$1 dict=$2; shift 2
  echo "== $t: ${secs}s"
  if ! $B/fuzz/$t -max_total_time="$secs" -print_final_stats=1 ${dict:+-dict="$dict"} \
      -artifact_prefix=$B/artifacts/$t- $B/corpus/${t#fuzz_} "$@"; then
    echo "FAIL: $t (see $B/artifacts/)"
    status=1
  fi
}
run fuzz_safetensors fuzz/safetensors.dict "$seeds"
run fuzz_json fuzz/json.dict fuzz/corpus/json
run fuzz_state "" "$state_seeds"
exit $status
