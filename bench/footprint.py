"""Daemon footprint: resident memory and CPU time of the daemon process alone (not its
FFmpeg children) while it supervises 200 streams, over a window after they all run.

Baselines measured in the same run: for memory, a bare interpreter
(``python -c "import time; time.sleep(60)"``); for CPU, the floor of supervision,
a minimal Python loop reading the same 200 FFmpeg's progress and logs
(``bench/floor.py``), over a window of the same length.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.common import (
    PYTHON,
    REPO,
    BenchError,
    Daemon,
    Row,
    Sample,
    bounded,
    daemon_argvs,
    env_for,
    kill_pids,
    log,
    make_clip,
    temp_home,
    write_state,
)

STREAMS = 200
RSS_TARGET_MIB = 60.0
CPU_TARGET_PCT = 2.0  # of one core
SETTLE = 5.0  # seconds after every stream runs before the window opens
MIB = 1 << 20


def bare_rss(home: Path) -> float:
    proc = subprocess.Popen(
        [PYTHON, "-c", "import time; time.sleep(60)"], env=env_for(home), stdin=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)
        return float(psutil.Process(proc.pid).memory_info().rss)
    finally:
        kill_pids([proc.pid])
        proc.wait(10)


def import_rss(home: Path) -> float:
    """RSS of an interpreter that has imported the daemon and everything it uses."""
    code = (
        "import resource, streamalchemy.daemon, streamalchemy.cli; "
        "print(int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize())"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], env=env_for(home), capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise BenchError(f"cannot import streamalchemy.daemon: {out.stderr.strip()}")
    return float(out.stdout)


def floor_window(home: Path, argvs: list[list[str]], window: float) -> dict[str, float]:
    argv_file = home / "argvs.json"
    argv_file.write_text(json.dumps(argvs))
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.floor", str(argv_file), str(SETTLE), str(window)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env_for(home), cwd=REPO,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=window + SETTLE + 180)
    finally:
        if proc.poll() is None:
            kill_pids([proc.pid])
            proc.wait(10)
    if proc.returncode != 0:
        raise BenchError(f"bench/floor.py failed with exit code {proc.returncode}")
    result: dict[str, float] = json.loads(out)
    return result


def daemon_window(home: Path, window: float, *, profile_to: Path | None = None) -> dict[str, float]:
    """Restore the saved streams, let them settle, then measure the daemon over ``window``."""
    if not (home / "active_streams.json").exists():
        raise BenchError("no state file to restore from")
    daemon = Daemon(home, profile_to=profile_to)
    try:
        daemon.wait_all_progress(STREAMS, 60 + STREAMS)
        time.sleep(SETTLE)
        ps = psutil.Process(daemon.pid)
        if profile_to is not None:
            ps.send_signal(signal.SIGUSR1)
        t0, cpu0 = time.monotonic(), ps.cpu_times()
        rss = [ps.memory_info().rss]
        while (elapsed := time.monotonic() - t0) < window:
            time.sleep(min(1.0, window - elapsed))
            rss.append(ps.memory_info().rss)
        cpu1, wall = ps.cpu_times(), time.monotonic() - t0
        if profile_to is not None:
            ps.send_signal(signal.SIGUSR2)
            bounded(profile_to.exists, 30, "the profile to be written")
        running = sum(1 for s in daemon.streams() if s.get("status") == "running")
        if running != STREAMS:
            raise BenchError(f"only {running}/{STREAMS} streams still running after the window")
        return {
            "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "wall_s": wall,
            "rss_bytes": float(max(rss)),
        }
    finally:
        daemon.stop()


def run(quick: bool = False) -> tuple[list[Row], dict[str, float]]:
    window, reps = (10.0, 1) if quick else (30.0, 3)
    with temp_home("foot") as home:
        clip = make_clip(home)
        entries = write_state(home, clip, STREAMS)
        argvs = daemon_argvs(home, entries)
        rss, cpu = Sample(), Sample()
        bare, floor_cpu, floor_rss = Sample(), Sample(), Sample()
        for rep in range(reps):
            bare.values.append(bare_rss(home) / MIB)
            f = floor_window(home, argvs, window)
            floor_cpu.values.append(100 * f["cpu_s"] / f["wall_s"])
            floor_rss.values.append(f["rss_bytes"] / MIB)
            d = daemon_window(home, window)
            cpu.values.append(100 * d["cpu_s"] / d["wall_s"])
            rss.values.append(d["rss_bytes"] / MIB)
            log(
                f"footprint run {rep + 1}/{reps}: daemon {rss.values[-1]:.1f} MiB "
                f"{cpu.values[-1]:.2f}% CPU; floor {floor_cpu.values[-1]:.2f}% CPU; "
                f"bare {bare.values[-1]:.1f} MiB"
            )
        extra = {"import_rss_mib": import_rss(home) / MIB, "floor_rss_mib": floor_rss.median}
    note = f"{reps} windows of {window:g}s, {STREAMS} streams"
    rows = [
        Row("Daemon footprint", f"{STREAMS} streams: resident memory (peak in window)", "MiB",
            rss, bare, "bare `python` interpreter", target_abs=RSS_TARGET_MIB, note=note),
        Row("Daemon footprint", f"{STREAMS} streams: CPU time, % of one core", "%", cpu,
            floor_cpu, f"minimal Python loop reading the same {STREAMS} FFmpeg",
            target_abs=CPU_TARGET_PCT, note=note),
    ]  # fmt: skip
    return rows, extra


def profile(seconds: float, out: Path) -> dict[str, float]:
    """The daemon's event loop under cProfile, over a steady window of ``seconds``."""
    with temp_home("fprof") as home:
        clip = make_clip(home)
        write_state(home, clip, STREAMS)
        return daemon_window(home, seconds, profile_to=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, extra = run(args.quick)
    print(json.dumps(extra))
    for row in rows:
        print(json.dumps(row.to_json()))


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
