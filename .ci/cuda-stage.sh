#!/usr/bin/env bash
# CI stage 2 (after the README's test command): the CUDA build of maml_ext on a machine without a
# GPU. A CUDA 13 build of torch 2.14.1 (a second torch version for the suite) goes into a venv
# cached outside the clone; maml_ext is compiled and linked against it for sm_80 and sm_90 with
# the installed nvcc, imported (_C.with_cuda must be True), and the CPU suite runs under it. No GPU
# is used: CUDA tests skip themselves, and every kernel's arithmetic is covered by the CPU twins
# (_mlp_*_batched, _mlp_maml_grad_emulated).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
cache="${MAML_EXT_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/maml_ext-ci}"
venv="$cache/venv-torch-2.14.1-cuda"
pip_quiet=(-q --disable-pip-version-check)
stamp() { echo "[cuda-stage $(date -u +%H:%M:%S)] $*"; }

# pip install runs every time: a no-op when the cached venv is complete (seconds), and it finishes
# an install that was interrupted or misses a requirement added since.
[ -x "$venv/bin/python" ] || { stamp "creating $venv (first run: about 5.5 GB of torch and nvidia-* wheels)"; mkdir -p "$cache"; "$python" -m venv "$venv"; }
stamp "installing the requirements into $venv"
if ! "$venv/bin/python" -m pip install "${pip_quiet[@]}" \
  "torch==2.14.1" "numpy>=1.22" "pybind11>=2.12,<3.2" "scikit-build-core>=0.10" \
  "cmake>=3.18" "ninja>=1.10" "pytest>=7" "hypothesis>=6.100" "matplotlib>=3.5" "setuptools>=61" "pillow>=9" \
  "fonttools>=4.40" "gymnasium[mujoco]==1.4.0" "mujoco==4.0.0" >"$cache/pip.log" 2>&1; then
  cat "$cache/pip.log" >&2
  exit 1
fi
py="$venv/bin/python"
"$py" -c "import torch; assert torch.__version__.startswith('2.14.1') and torch.version.cuda, torch.__version__; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

stamp "building maml_ext with CUDA for sm_80 and sm_90"
TORCH_CUDA_ARCH_LIST="8.0;9.0" "$py" -m pip install "${pip_quiet[@]}" --no-build-isolation \
  --no-deps --force-reinstall -Cbuild-dir=build/cuda-{wheel_tag} \
  -Ccmake.define.MAML_EXT_CUDA=ON .
(cd / && "$py" -c "
import maml_ext._extension as e, maml_ext._C as C
assert e.STATUS == 'loaded', e.STATUS
assert C.with_cuda, 'maml_ext was built without CUDA kernels'
print('maml_ext', C.__file__, 'with_cuda', C.with_cuda, 'torch', C.torch_version)")

# The suite with the CUDA build's kernels (the CPU ones; CUDA tests skip themselves without a GPU).
# The reference path's run is the first stage's (MAML_EXT_NO_EXTENSION=1), under torch 2.13.
stamp "CPU suite under the CUDA build"
"$venv/bin/pytest" -q
stamp "done"
