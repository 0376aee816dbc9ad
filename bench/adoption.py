"""Live restore at N = 200: a daemon SIGKILLed with N ``--codec copy --output null``
streams, and the next launch.

- adoption (live restore on): from ``daemon run`` until the socket answers, and until
  every stream runs adopted (the same pid) with its frames moving again;
- against today's path (live restore off): the SIGKILL takes FFmpeg down and the next
  launch restores every stream, until each one reports frames;
- the daemon's CPU with N streams followed through files (live restore's progress and
  log files, read once a second), over a window of seconds, in % of one core.

Usage: bash bench/run.sh --adoption [--quick] [--runs N] [--write]
(--write puts the table in docs/benchmarks.md, section "Live restore").
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import psutil

from bench.common import (
    DOC,
    REPO,
    BenchError,
    Daemon,
    Sample,
    kill_pids,
    log,
    make_clip,
    temp_home,
    write_section,
    write_state,
)
from bench.run import num, spread

BEGIN, END = "<!-- adoption: begin (bench/adoption.py --write) -->", "<!-- adoption: end -->"
STREAMS = 200
WINDOW = 20.0  # seconds of daemon CPU measured
POLL = 0.1
CPU_TARGET = 2.0  # % of one core


def launch(home: Path, live_restore: bool) -> Daemon:
    os.environ["STREAMALCHEMY_LIVE_RESTORE"] = "1" if live_restore else "0"
    return Daemon(home)


def kill(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)


def pids(daemon: Daemon) -> dict[str, int]:
    return {s["name"]: s["pid"] for s in daemon.streams() if s.get("pid")}


def adopted(daemon: Daemon, before: dict[str, int], timeout: float) -> tuple[float, float]:
    """Seconds from the launch until the socket answers, and until every stream runs with
    its old pid and frames beyond those first seen."""
    daemon.wait_ready(timeout)
    up = time.monotonic() - daemon.started
    first: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        moving = 0
        for s in daemon.streams():
            if before.get(s["name"]) != s.get("pid"):
                continue
            frames = int(s.get("frames") or 0)
            seen = first.setdefault(s["name"], frames)
            moving += frames > seen
        if moving == len(before):
            return up, time.monotonic() - daemon.started
        time.sleep(POLL)
    raise BenchError(f"not every stream adopted with figures flowing within {timeout:g}s")


def leftovers(home: Path) -> list[int]:
    """FFmpeg of this home still running: its command line names the clip in the home."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(home) in " ".join(proc.info["cmdline"] or ()):
            found.append(proc.pid)
    return found


def cpu_percent(pid: int, seconds: float) -> float:
    proc = psutil.Process(pid)
    t0, c0 = time.monotonic(), float(sum(proc.cpu_times()[:2]))
    time.sleep(seconds)
    used = float(sum(proc.cpu_times()[:2])) - c0
    return 100 * used / (time.monotonic() - t0)


def run(n: int, reps: int) -> dict[str, Sample]:
    out = {k: Sample() for k in ("socket", "adopted", "restored", "cpu")}
    with temp_home("adopt") as home:
        clip = make_clip(home)
        for rep in range(reps):
            write_state(home, clip, n)
            daemon = launch(home, live_restore=True)
            daemon.wait_all_progress(n, 60 + n)
            before = pids(daemon)
            kill(daemon)
            daemon = launch(home, live_restore=True)
            try:
                up, done = adopted(daemon, before, 60 + n)
                out["socket"].values.append(up)
                out["adopted"].values.append(done)
                time.sleep(3)  # past the adoption's own work
                out["cpu"].values.append(cpu_percent(daemon.pid, WINDOW))
                log(
                    f"adoption N={n} run {rep + 1}: socket {up:.2f}s, all flowing {done:.2f}s, "
                    f"daemon CPU {out['cpu'].values[-1]:.2f}% of a core"
                )
                daemon.stop()  # the streams stop; the next launch restores them all
                daemon = launch(home, live_restore=False)
                took = daemon.wait_all_progress(n, 60 + n, POLL)
                out["restored"].values.append(took)
                log(f"restore N={n} run {rep + 1}: all progressing {took:.2f}s")
            finally:
                daemon.stop()
                kill_pids(leftovers(home))
    return out


def section(found: dict[str, Sample], n: int) -> str:
    cpu = found["cpu"]
    met = "met" if cpu.values and cpu.median <= CPU_TARGET else "missed"
    restored = f"restore of {n}: {spread(found['restored'], 's')}"
    rows = [
        f"| socket answering after the launch | {spread(found['socket'], 's')} | | |",
        f"| all {n} adopted, figures flowing again | {spread(found['adopted'], 's')} "
        f"| {restored} | no stream stopped |",
        f"| daemon CPU following {n} streams' files | {spread(cpu, '%')} of a core "
        f"| at most {num(CPU_TARGET)}% | {met} |",
    ]
    table = "\n".join(rows)
    return f"""{BEGIN}
## Live restore: {n} streams across a daemon SIGKILL (bench/adoption.py)

{n} saved `--codec copy --output null` file streams; the daemon is killed with SIGKILL and
launched again. With live restore every FFmpeg survives and is adopted (same pid); without
it, the next launch restores every stream (measured after a `daemon stop`: each FFmpeg
started again, as after a SIGKILL before live restore). Seconds from `daemon run`;
medians (min-max) of {len(cpu.values)} run(s) on a shared 2-core machine. Re-run with
`bash bench/run.sh --adoption --write`.

| Measure | Result | Against | |
|---|---|---|---|
{table}
{END}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50 streams, one run")
    parser.add_argument("--runs", type=int, default=2, help="runs of each (default 2)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    n, reps = (50, 1) if args.quick else (STREAMS, args.runs)
    text = section(run(n, reps), n)
    print(text)
    if args.write:
        write_section(text, BEGIN, END)
        log(f"wrote {Path(DOC).relative_to(REPO)}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
