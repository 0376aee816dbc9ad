#!/usr/bin/env bash
# Run the benchmarks and write docs/benchmarks.md (see bench/run.py for options).
# Usage: bash bench/run.sh [--quick] [--only store|cli|start|footprint|restore ...] [--no-profile]
#    or: bash bench/run.sh load [--batch 100] [--batches 2] [--hold 20]
#    or: bash bench/run.sh --fleet [--shards N] [--streams M] [--write]
#    or: bash bench/run.sh --metrics [--quick] [--write]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x .venv/bin/python ]; then
    py=.venv/bin/python
elif [ -x /tmp/venv/bin/python ]; then
    py=/tmp/venv/bin/python
else
    echo "bench: no Python environment; run 'bash scripts/bootstrap.sh' first (makes .venv)" >&2
    exit 2
fi
if ! command -v ffmpeg >/dev/null; then
    echo "bench: ffmpeg is not on PATH; run 'bash scripts/bootstrap.sh' first" >&2
    exit 2
fi
if ! "$py" -c "import psutil, platformdirs, filelock" 2>/dev/null; then
    echo "bench: $py lacks the project's dependencies; run 'bash scripts/bootstrap.sh'" >&2
    exit 2
fi

# The work tree first on the path, whether or not the venv has streamalchemy installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Byte-code caches as an installed package has them (this environment may turn them off).
unset PYTHONDONTWRITEBYTECODE
# Streams that run for days (bench/soak.py): bash bench/run.sh --soak [--minutes N | --hours N]
if [ "${1:-}" = "--soak" ]; then shift; exec "$py" -m bench.soak "$@"; fi
# A header flood against the socket, the daemon's memory before and after: bash bench/run.sh --flood
if [ "${1:-}" = "--flood" ]; then shift; exec "$py" -m bench.flood "$@"; fi
# 8 hostile peers and 1,100 idle connections on the metrics address: bash bench/run.sh --hostile
if [ "${1:-}" = "--hostile" ]; then shift; exec "$py" -m bench.hostile "$@"; fi
# Shedding by priority, more streams than the cores can carry: bash bench/run.sh --overload [--minutes N] [--write]
if [ "${1:-}" = "--overload" ]; then shift; exec "$py" -m bench.overload "$@"; fi
if [ "${1:-}" = load ]; then shift; exec "$py" -m bench.load "$@"; fi  # bench/load.py
# The fleet simulation (N daemons as N shards of one apply file): bash bench/run.sh --fleet [--write]
if [ "${1:-}" = "--fleet" ]; then shift; exec "$py" -m bench.fleet "$@"; fi
# The metrics cost, 50 streams scraped every second: bash bench/run.sh --metrics [--quick] [--write]
if [ "${1:-}" = "--metrics" ]; then shift; exec "$py" -m bench.metrics_scrape "$@"; fi
# Live restore, 200 streams across a daemon SIGKILL: bash bench/run.sh --adoption [--quick] [--write]
if [ "${1:-}" = "--adoption" ]; then shift; exec "$py" -m bench.adoption "$@"; fi
exec "$py" -m bench.run "$@"
