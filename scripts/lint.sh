#!/usr/bin/env bash
# The linters, configured in pyproject.toml:  bash scripts/lint.sh   (after pip install -e '.[test]')
#   ruff check         — lint: pyflakes, pycodestyle, isort, bugbear, pyupgrade, simplify, …
#   ruff format --check — one formatting (ruff format . applies it)
#   mypy               — types; strict on the pipeline core
# The test suite runs this script too (tests/project/test_lint.py), so CI runs it on every change.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check .
mypy
