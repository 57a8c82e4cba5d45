#!/usr/bin/env bash
# Lint: `ruff check` with the configuration in pyproject.toml ([tool.ruff]). Needs .ci/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
"${RUFF:-.venv/bin/ruff}" check .
