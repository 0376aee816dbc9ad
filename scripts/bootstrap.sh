#!/usr/bin/env bash
# Install what StreamAlchemy needs on a fresh Debian/Ubuntu machine: FFmpeg (apt-get,
# when missing) and a virtual environment in .venv with the project in it.
# Usage: scripts/bootstrap.sh [EXTRA]   e.g. "test" installs the test tools too.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
packages=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || packages+=(ffmpeg)
# The tests scrape the daemon with a real Prometheus and check it with promtool.
if [ "${1:-}" = test ]; then
    command -v prometheus >/dev/null && command -v promtool >/dev/null || packages+=(prometheus)
fi
# Debian's own python3 makes virtual environments only with python3-venv installed.
[ -x .venv/bin/python ] || "$PYTHON" -c "import ensurepip, venv" 2>/dev/null \
    || packages+=(python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
    echo "==> installing ${packages[*]} with apt-get"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
extra="${1:-}"
echo "==> installing streamalchemy${extra:+[$extra]} into .venv"
.venv/bin/python -m pip install -qq --upgrade pip
.venv/bin/python -m pip install -qq -e ".${extra:+[$extra]}"
