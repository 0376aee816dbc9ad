#!/usr/bin/env bash
# Install everything (FFmpeg, .venv, test tools) and run the whole test suite:
# lint, type check, then pytest against the real daemon and real FFmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
echo "==> ruff"
.venv/bin/ruff check streamalchemy tests bench scripts
echo "==> mypy"
.venv/bin/mypy streamalchemy
echo "==> pytest"
.venv/bin/pytest -q "$@"
