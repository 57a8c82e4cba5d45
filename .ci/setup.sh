#!/usr/bin/env bash
# Idempotent set-up of a fresh machine (Python >= 3.10): a virtual environment in .venv with the
# pinned CPU torch and the build tools, then maml_ext compiled against that torch.
# Build isolation stays off: an isolated build would fetch an unrelated (multi-GB CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "torch==2.13.0" "numpy>=1.22" "pybind11>=2.12,<3.2" "scikit-build-core>=0.10" \
  "cmake>=3.18" "ninja>=1.10" "pytest>=7" "hypothesis>=6.100" "ruff==0.17.5" "matplotlib>=3.5" "setuptools>=61" \
  "pillow>=9" "fonttools>=4.40"
# MuJoCo locomotion tasks (the 'rl' extra): pinned, because newer PyPI releases shadow the mirrors'
# (the [mujoco] extra adds imageio, which gymnasium's MuJoCo envs import). Neither pulls in torch.
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "gymnasium[mujoco]==1.4.0" "mujoco==4.0.0"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation \
  -Cbuild-dir=build/{wheel_tag} .
