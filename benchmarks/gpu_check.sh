#!/usr/bin/env bash
# The GPU check, one command for a machine with an NVIDIA GPU (fits in 10 minutes: each step has
# a time limit and the three add up to 570 s). From the repository root, in a venv with a CUDA
# build of torch and serve_app installed (`pip install -e ".[test,bench]"`), wrk on PATH:
#
#   benchmarks/gpu_check.sh             # 1. python -m serve_app.triton_install install --gpu
#                                       # 2. python -m pytest -m gpu tests/gpu (KIND_GPU, parity
#                                       #    CPU vs GPU <= 1e-4, NVML metrics, one GPU per replica)
#                                       # 3. python -m benchmarks.gpu (standalone Triton and serve_app
#                                       #    triton, mlp4096 and resnet50 on KIND_GPU, 1 and 64 clients)
#   benchmarks/gpu_check.sh --dry-run   # no GPU needed: the same steps, the tests skip themselves and
#                                       # the benchmark only builds and checks its GPU repository
#
# Writes into $GPU_CHECK_OUT (default benchmarks/results; a temporary folder for --dry-run):
# gpu-check.log (every step's output), gpu-check.json (the card, each step's exit code and
# seconds) and, from step 3, results-gpu.json and results-gpu.md. Exits non-zero if a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=false
case "${1:-}" in
  --dry-run) dry_run=true ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
if $dry_run; then out="${GPU_CHECK_OUT:-$(mktemp -d -t gpu-check-XXXXXX)}"; else out="${GPU_CHECK_OUT:-benchmarks/results}"; fi
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"

card=""
if command -v nvidia-smi >/dev/null 2>&1; then
  card="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
fi
if [ -z "$card" ] && ! $dry_run; then
  echo "no GPU (nvidia-smi finds none): run $0 --dry-run" >&2
  exit 2
fi
echo "card: ${card:-none}; dry run: $dry_run; python: $(command -v python)" | tee -a "$log"

names=() codes=() seconds=()
step() {  # NAME LIMIT_S COMMAND...: run it under a time limit, its output into the log
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$log"
  names+=("$name") codes+=("$rc") seconds+=("$((SECONDS - started))")
}

step install 150 python -m serve_app.triton_install install --gpu
step "gpu tests" 180 python -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider
bench=(python -m benchmarks.gpu --out "$out")
if $dry_run; then bench+=(--dry-run); fi
step benchmark 240 "${bench[@]}"

python - "$out/gpu-check.json" "$card" "$dry_run" "${names[@]}" -- "${codes[@]}" -- "${seconds[@]}" <<'EOF'
import json, sys
path, card, dry_run, *rest = sys.argv[1:]
first = rest.index("--")
second = rest.index("--", first + 1)
names, codes, seconds = rest[:first], rest[first + 1:second], rest[second + 1:]
steps = [{"name": n, "rc": int(c), "seconds": int(s)} for n, c, s in zip(names, codes, seconds)]
summary = {"card": card or None, "dry_run": dry_run == "true", "steps": steps}
open(path, "w").write(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
EOF
echo "wrote $out/gpu-check.json and $log"
for rc in "${codes[@]}"; do [ "$rc" -eq 0 ] || exit 1; done
