#!/usr/bin/env bash
# The prepared GPU check (docs/cuda.md): on a machine with an NVIDIA GPU and a CUDA build of torch
# >= 2.4 already installed (no network needed), in under 8 minutes:
#   1. build maml_ext with CUDA for the GPU present, in a venv that sees the installed torch,
#   2. tests/test_ops_cuda.py (every op against the reference on the GPU, the fused kernel's shared
#      and global-memory workspaces, CUDA-graph capture of a meta-step, no host-device sync),
#   3. compute-sanitizer memcheck and racecheck on the fused-kernel and multi-tensor tests,
#   4. bench_ops and bench_classification with --device cuda (quick settings).
# Every step's output and time go to benchmarks/gpu/results/<device>/ (and to $OUT when set, as on
# a lent machine); a failing step is recorded and the next one still runs. The time limits of the
# steps add up to 460 s.
#   usage: bash benchmarks/gpu/check.sh            (PYTHON=... to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
device=$("$python" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no-gpu')")
slug=$(echo "$device" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
results="benchmarks/gpu/results/$slug"
mkdir -p "$results"
summary="$results/summary.md"
{
  echo "# GPU check on $device ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $("$python" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')"); $(nvcc --version 2>/dev/null | tail -1)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
} > "$summary"

# step NAME TIMEOUT_S COMMAND...: runs it with a time limit, output in $results/NAME.log.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  echo "== $name"
  timeout "$limit" "$@" > "$results/$name.log" 2>&1
  rc=$?
  local verdict=passed
  [ $rc -eq 124 ] && verdict="timed out (${limit}s)" || { [ $rc -ne 0 ] && verdict="failed (rc $rc)"; }
  echo "| $name | $verdict | $((SECONDS - t0)) |" >> "$summary"
  tail -3 "$results/$name.log"
  return $rc
}

[ "$device" = no-gpu ] && { echo "no CUDA device visible to torch" | tee -a "$summary"; exit 1; }
arch=$("$python" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
venv=build/gpu-venv
mkdir -p build && "$python" -m venv --system-site-packages "$venv"
py="$venv/bin/python"
step build 180 env TORCH_CUDA_ARCH_LIST="$arch" "$py" -m pip install -q \
  --no-build-isolation --no-deps --no-index -Cbuild-dir=build/gpu-{wheel_tag} \
  -Ccmake.define.MAML_EXT_CUDA=ON . || { cp -r "$results" "${OUT:-/tmp}/" 2>/dev/null; exit 1; }
step import 60 bash -c "cd / && '$py' -c 'import maml_ext._C as C, torch; assert C.with_cuda; print(C.torch_version, torch.cuda.get_device_name())'"

pytest=("$py" -m pytest -q -p no:cacheprovider)
step test_ops_cuda 60 "${pytest[@]}" tests/test_ops_cuda.py
if command -v compute-sanitizer >/dev/null; then
  # The fused kernel and the multi-tensor update only: the sanitizers slow kernels down ~100x.
  sel=(tests/test_ops_cuda.py -k "fused or multi_tensor")
  step memcheck 50 compute-sanitizer --tool memcheck --error-exitcode 3 "${pytest[@]}" "${sel[@]}"
  step racecheck 50 compute-sanitizer --tool racecheck --error-exitcode 3 "${pytest[@]}" "${sel[@]}"
else
  echo "| sanitizers | compute-sanitizer not installed | 0 |" >> "$summary"
fi
step bench_ops 30 "$py" benchmarks/bench_ops.py --device cuda --quick --min-time 0.5
step bench_classification 30 "$py" benchmarks/bench_classification.py --device cuda --quick --min-time 1
echo "bench_peers has no --device option yet: not run on the GPU." >> "$summary"
cat "$summary"
[ -n "${OUT:-}" ] && cp -r "$results" "$OUT/"
true
