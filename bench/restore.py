"""Restore: N saved ``--codec copy --output null`` file streams, from ``daemon run``
until every stream reports frames > 0, against the floor (the same N FFmpeg argvs
spawned directly, in parallel, until each one's first progress block with frame > 0).

Runs alternate floor, restore, floor, restore... so that the machine's noise falls
on both alike. A small warm-up restore first fills the OS page cache and the
daemon's encoder cache, as on a machine where the daemon has run before.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from bench.common import (
    BenchError,
    Daemon,
    Row,
    Sample,
    bounded,
    daemon_argvs,
    log,
    make_clip,
    temp_home,
    write_state,
)
from bench.floor import first_progress

POLL_INTERVAL = 0.1  # seconds between GET /streams while waiting for the restore
# Issue 15: at most this many times the floor; N = 400 is measured, with no target.
TARGETS: dict[int, float | None] = {50: 1.10, 200: 1.15, 400: None}


def ffmpeg_count_of_mine(home: Path) -> int:
    """FFmpeg processes whose command line names this home (the clip lives there)."""
    home_text, count = str(home), 0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] in ("ffmpeg", "setpriv") and home_text in " ".join(
                p.info["cmdline"] or ()
            ):
                count += 1
        except psutil.Error:
            continue
    return count


def _log_times(home: Path, since: float) -> tuple[float | None, list[float]]:
    """From the daemon's log: when it listened, and when it launched each FFmpeg,
    in seconds after ``since`` (wall clock; the log has millisecond timestamps)."""
    listening, launches = None, []
    try:
        text = (home / "logs" / "daemon.log").read_text(errors="replace")
    except OSError:
        return None, []
    for line in text.splitlines():
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if stamp < since - 1:
            continue  # an earlier run's lines
        if " listening on " in line and listening is None:
            listening = stamp - since
        elif " starting " in line and " -> " in line:
            launches.append(stamp - since)
    return listening, launches


@dataclass
class Breakdown:
    """Where a restore's time goes, medians over the runs."""

    listening: Sample = field(default_factory=Sample)  # socket bound, restore begins
    last_launch: Sample = field(default_factory=Sample)  # the last FFmpeg spawned
    total: Sample = field(default_factory=Sample)  # every stream progressing


def restore_once(home: Path, n: int, timeout: float, breakdown: Breakdown | None = None) -> float:
    launched_at = time.time()
    daemon = Daemon(home)
    try:
        took = daemon.wait_all_progress(n, timeout, POLL_INTERVAL)
    finally:
        daemon.stop()
    if breakdown is not None:
        listening, launches = _log_times(home, launched_at)
        if listening is not None and len(launches) >= n:
            breakdown.listening.values.append(listening)
            breakdown.last_launch.values.append(max(launches))
            breakdown.total.values.append(took)
    return took


def settle(home: Path) -> None:
    """Between runs: nothing of ours left running, and a moment for the machine to calm."""
    deadline = time.monotonic() + 30
    while ffmpeg_count_of_mine(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = ffmpeg_count_of_mine(home)
    if left:
        raise BenchError(f"{left} FFmpeg processes of {home} still run after a benchmark run")
    time.sleep(1.0)


def run(quick: bool = False) -> tuple[list[Row], dict[int, Breakdown]]:
    sizes = {50: 2, 200: 1} if quick else {50: 5, 200: 3, 400: 2}
    rows, breakdowns = [], {}
    with temp_home("restore") as home:
        clip = make_clip(home)
        log("restore: warm-up (5 streams)")
        write_state(home, clip, 5)
        restore_once(home, 5, 60)
        settle(home)
        for n, reps in sizes.items():
            entries = write_state(home, clip, n)
            argvs = daemon_argvs(home, entries)
            floor, restore = Sample(), Sample()
            breakdowns[n] = bd = Breakdown()
            timeout = 60 + n * 1.0
            for rep in range(reps):
                floor.values.append(first_progress(argvs, timeout))
                settle(home)
                write_state(home, clip, n)
                restore.values.append(restore_once(home, n, timeout, bd))
                settle(home)
                log(
                    f"restore N={n} run {rep + 1}/{reps}: floor {floor.values[-1]:.2f}s, "
                    f"restore {restore.values[-1]:.2f}s"
                )
            rows.append(
                Row(
                    bench="Restore",
                    measure=f"N = {n}: launch to all streams progressing",
                    unit="s",
                    result=restore,
                    baseline=floor,
                    baseline_name=f"{n} FFmpeg spawned directly",
                    target_ratio=TARGETS[n],
                    note=f"{reps} runs each; GET /streams polled every {POLL_INTERVAL:g}s",
                )
            )
    return rows, breakdowns


def profile(n: int, out: Path) -> float:
    """One restore of ``n`` streams with the daemon under cProfile from its first line."""
    with temp_home("rprof") as home:
        clip = make_clip(home)
        write_state(home, clip, n)
        daemon = Daemon(home, "--from-start", profile_to=out)
        try:
            took = daemon.wait_all_progress(n, 60 + n, POLL_INTERVAL)
            os.kill(daemon.pid, signal.SIGUSR2)
            bounded(out.exists, 30, "the profile to be written")
        finally:
            daemon.stop()
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, breakdowns = run(args.quick)
    for row in rows:
        print(row.to_json())
    for n, bd in breakdowns.items():
        print(n, bd)


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
