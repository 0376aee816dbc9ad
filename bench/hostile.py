"""The control socket while the metrics address is attacked (issue 20).

Usage: bash bench/run.sh --hostile [--requests N] [--write]. A daemon with
``--metrics-addr`` answers N ``GET /status`` on its socket, first quietly, then while
8 hostile peers and 1,100 idle connections (tests/hostile_peers.py) hold its metrics
address; then one ``start`` and one ``list --json`` under attack. Prints the
latencies (median, p99, max), the daemon's CPU share and its most descriptors, and
with --write puts them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

import psutil

from bench.common import (
    PYTHON,
    REPO,
    Daemon,
    env_for,
    http,
    log,
    percentile,
    run_cmd,
    temp_home,
    write_section,
)

sys.path.insert(0, str(REPO / "tests"))
from hostile_peers import ATTACKS, Hostile  # a test helper, shared with the e2e test

BEGIN, END = "<!-- hostile: begin (bench/hostile.py --write) -->", "<!-- hostile: end -->"
IDLE = 1100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def latencies(daemon: Daemon, n: int) -> list[float]:
    """Seconds of each of ``n`` ``GET /status`` on the socket, one after another."""
    out = []
    for _ in range(n):
        began = time.perf_counter()
        assert http(daemon.socket, "GET", "/status", timeout=60).get("success")
        out.append(time.perf_counter() - began)
    return out


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return (
        f"median {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, max {ms[-1]:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    with temp_home("hostile") as home:
        port = free_port()
        daemon = Daemon(home, "--no-restore", "--metrics-addr", f"127.0.0.1:{port}")
        try:
            daemon.wait_ready()
            proc = psutil.Process(daemon.pid)
            quiet = latencies(daemon, args.requests)
            log(f"quiet: {summary(quiet)}")
            hostile = Hostile("127.0.0.1", port, idle=IDLE)
            try:
                deadline = time.monotonic() + 30
                while not (all(hostile.rounds.values()) and len(hostile.idle) >= IDLE):
                    if time.monotonic() > deadline:
                        raise SystemExit("bench: the attack did not get going in 30 s")
                    time.sleep(0.2)
                cpu_before, wall_before = sum(proc.cpu_times()[:2]), time.monotonic()
                attacked = latencies(daemon, args.requests)
                env = env_for(home)
                cli = [PYTHON, "-m", "streamalchemy"]
                start = run_cmd(
                    [
                        *cli,
                        "start",
                        "b1",
                        "--testsrc",
                        "--resolution",
                        "480",
                        "--fps",
                        "5",
                        "--output",
                        "null",
                    ],
                    env,
                    home,
                )
                listed = run_cmd([*cli, "list", "--json"], env, home)
                cpu = (sum(proc.cpu_times()[:2]) - cpu_before) / (time.monotonic() - wall_before)
                fds = proc.num_fds()
                rounds = sum(hostile.rounds.values())
            finally:
                hostile.close()
            log(f"attacked: {summary(attacked)}; start {start:.2f} s, list {listed:.2f} s")
            log(f"daemon CPU {cpu:.0%} of a core, {fds} fds; {rounds} attack rounds")
        finally:
            daemon.stop()
    text = f"""{BEGIN}
## The control socket while the metrics address is attacked

`bash bench/run.sh --hostile --write` ({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}):
a daemon with `--metrics-addr`, {len(ATTACKS)} hostile peers ({", ".join(ATTACKS)})
and {IDLE} idle connections kept open on the metrics address; {args.requests} `GET /status`
on the control socket one after another.

| | `GET /status` on the socket |
|---|---|
| quiet | {summary(quiet)} |
| under attack | {summary(attacked)} |

Under attack: `start` {start:.2f} s, `list --json` {listed:.2f} s (whole CLI processes);
the daemon used {cpu:.0%} of a core and held {fds} descriptors at the end (the metrics listener's
cap is 64 connections; past it a peer gets 503 at once). Before the fix (issue 20),
8 such peers kept `GET /status` waiting 2.99 s and 64 peers 13.9 s.
{END}"""
    print(text)
    if args.write:
        write_section(text, BEGIN, END)


if __name__ == "__main__":
    main()
