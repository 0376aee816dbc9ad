#!/usr/bin/env bash
# Install everything (FFmpeg, .venv, test tools) and run the whole test suite:
# lint, type check, then pytest against the real daemon and real FFmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
echo "==> ruff"
.venv/bin/ruff check streamalchemy tests bench scripts
.venv/bin/ruff format --check streamalchemy tests bench scripts
echo "==> mypy"
.venv/bin/mypy streamalchemy
echo "==> pytest"
if [ $# -gt 0 ]; then
    .venv/bin/pytest -q "$@"  # your own selection, one test at a time
    exit
fi
# Most tests wait on real time (FFmpeg plays at its own pace), not on the CPU: the fast
# tier and the e2e tests marked parallel run two at a time; the e2e tests that measure
# CPU, gaps or stalls run after them, alone.
.venv/bin/pytest -q -n 2 -m "not e2e or parallel"
.venv/bin/pytest -q -m "e2e and not parallel"
