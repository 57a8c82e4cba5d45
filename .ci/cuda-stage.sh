#!/usr/bin/env bash
# CI stage 2 (after the README's test command): the CUDA build of maml_ext on a machine without a
# GPU. A CUDA 13 build of torch 2.14.1 (a second torch version for the suite) goes into a venv
# cached outside the clone; maml_ext is compiled and linked against it for sm_80 and sm_90 with
# the installed nvcc, imported (_C.with_cuda must be True), and the CPU suite runs under it in both
# modes. No GPU is used: CUDA tests skip themselves, every kernel's arithmetic is covered by the
# CPU twins (_mlp_*_batched, _mlp_maml_grad_emulated).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
cache="${MAML_EXT_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/maml_ext-ci}"
venv="$cache/venv-torch-2.14.1-cuda"
pip_quiet=(-q --disable-pip-version-check)
stamp() { echo "[cuda-stage $(date -u +%H:%M:%S)] $*"; }

# The venv counts as cached only once its install finished (.complete), so an interrupted install
# is redone rather than reused.
if [ ! -f "$venv/.complete" ]; then
  stamp "creating $venv (first run: about 5.5 GB of torch and nvidia-* wheels)"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install "${pip_quiet[@]}" \
    "torch==2.14.1" "numpy>=1.22" "pybind11>=2.12,<3.2" "scikit-build-core>=0.10" \
    "cmake>=3.18" "ninja>=1.10" "pytest>=7" "matplotlib>=3.5" "setuptools>=61" "pillow>=9" \
    "fonttools>=4.40" "gymnasium[mujoco]==1.4.0" "mujoco==4.0.0"
  touch "$venv/.complete"
else
  stamp "using the cached $venv"
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

# Both suites run even when the first fails, so that one CI log shows both; the stage fails if either does.
failed=0
stamp "CPU suite under the CUDA build"
"$venv/bin/pytest" -q || failed=1
stamp "CPU suite without the extension"
MAML_EXT_NO_EXTENSION=1 "$venv/bin/pytest" -q || failed=1
stamp "done (failed=$failed)"
exit $failed
