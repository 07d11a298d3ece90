#!/usr/bin/env bash
# Time one DeepSeek-V4 attention layer with `dsv4 bench` and with the PyTorch
# eager baseline (bench/torch_baseline.py) on the same shape, then print both
# and the speed-up (torch seconds / dsv4 seconds).
#
#   bench/compare.sh [--preset P] [--layer-type swa|csa|hca] [--seq S] [--threads N] [--repeats R]
#
# Environment: DSV4_BIN (default build/dsv4), PYTHON (default /usr/bin/python3,
# Debian's python3 with python3-torch). The two runs go one after the other.
# Exit status: 0 when both ran, 1 when either failed (its column says why).
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

preset=v4-flash layer_type=csa seq=1024 threads=$(nproc) repeats=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) preset=$2; shift 2 ;;
    --layer-type) layer_type=$2; shift 2 ;;
    --seq) seq=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
dsv4=${DSV4_BIN:-$root/build/dsv4}
python=${PYTHON:-/usr/bin/python3}
args=(--preset "$preset" --layer-type "$layer_type" --seq "$seq" --threads "$threads" --repeats "$repeats" --json)

# Run one side; its stderr (progress) passes through, the last stdout line is
# its JSON result. A failure becomes {"error": ...} so the table still prints.
run_side() {
  local out rc=0
  echo "+ $*" >&2
  out=$("$@") || rc=$?
  local last
  last=$(printf '%s\n' "$out" | awk 'NF { line = $0 } END { print line }')
  if [[ $rc -ne 0 && "$last" != *'"error"'* ]]; then
    last="{\"error\": \"exit status $rc\"}"
  elif [[ -z "$last" ]]; then
    last='{"error": "no output"}'
  fi
  printf '%s\n' "$last"
}

dsv4_json=$(run_side "$dsv4" bench "${args[@]}")
torch_json=$(run_side "$python" "$root/bench/torch_baseline.py" "${args[@]}")

"$python" - "$dsv4_json" "$torch_json" "$preset" "$layer_type" "$seq" "$threads" "$repeats" <<'EOF'
import json, sys

def parse(text):
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else {"error": "not a JSON object: " + text}
    except ValueError:
        return {"error": "not JSON: " + text}

dsv4, torch = parse(sys.argv[1]), parse(sys.argv[2])
preset, layer_type, seq, threads, repeats = sys.argv[3:8]
print(f"\n{preset} {layer_type}  S={seq}  threads={threads}  repeats={repeats}")

def cell(obj, key, scale=1.0, fmt="{:.3f}"):
    if "error" in obj:
        return "-"
    value = obj.get(key)
    return fmt.format(value * scale) if isinstance(value, (int, float)) else "?"

rows = [("seconds (median)", "seconds", 1.0, "{:.3f}"),
        ("tokens/s", "tokens_per_s", 1.0, "{:.1f}"),
        ("peak RSS (GB)", "peak_rss_bytes", 1e-9, "{:.2f}")]
print(f"{'':<18}{'dsv4':>14}{'torch-eager':>14}")
for label, key, scale, fmt in rows:
    print(f"{label:<18}{cell(dsv4, key, scale, fmt):>14}{cell(torch, key, scale, fmt):>14}")

ok = True
for name, obj in (("dsv4", dsv4), ("torch-eager", torch)):
    if "error" in obj:
        print(f"{name}: error: {obj['error']}")
        ok = False
if ok and dsv4.get("seconds", 0) > 0 and isinstance(torch.get("seconds"), (int, float)):
    print(f"speed-up (torch s / dsv4 s): {torch['seconds'] / dsv4['seconds']:.2f}x")
sys.exit(0 if ok else 1)
EOF
