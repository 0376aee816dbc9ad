"""Overload: more re-encoded streams than the machine can carry, priorities mixed.

1. One re-encoded test pattern (480p, 30 fps, libx264) is measured alone: its CPU
   sizes the set, N streams needing about twice the cores.
2. A state file of N streams (one at priority 10, a quarter at 5, the rest at 0) is
   restored by a fresh daemon, which knows nothing of their CPU: it starts them all.
   Sampled every second for the run's minutes: each stream's status and frames.
   Reported: the seconds until the top priority is back in real time (its frames over
   the last 10 s at 95% of its frame rate or more), how many streams were shed, how
   many came back, and whether anything flapped (a stream shed more than once).
3. The daemon is stopped and launched again (a power cut's restore): it remembers the
   CPU and the shed streams, so it holds back what will not fit; the seconds until the
   top priority is in real time again.
4. ``--raise``: N streams of equal priority (nothing may be shed for 30 s), then one
   raised to priority 10 with ``start --replace``: the seconds until it is in real time,
   and how many were shed for it (the one-at-a-time rule, not a restore).

Usage: bash bench/run.sh --overload [--minutes 10] [--shed-after 20] [--raise] [--write]
(--write puts the tables in docs/benchmarks.md, section "Overload").
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.common import BenchError, Daemon, env_for, log, run_cmd, temp_home, write_section

BEGIN, END = "<!-- overload: begin (bench/overload.py --write) -->", "<!-- overload: end -->"
RAISE_BEGIN = "<!-- overload-raise: begin (bench/overload.py --raise --write) -->"
RAISE_END = "<!-- overload-raise: end -->"
EQUAL_FOR = 30.0  # seconds of equal priorities, where nothing may be shed
FPS = 30
WINDOW = 10.0  # seconds of frames a "real time" verdict is taken over
CORES = os.cpu_count() or 1
MOST = 40  # streams at the most, however cheap one is


def config(priority: int) -> dict[str, str]:
    return {
        "video_codec": "h264",
        "resolution": "480",
        "target_fps": str(FPS),
        "audio_enabled": "no",
        "hardware_accel": "no",
        "duration_hours": "0",
        "stream_type": "testsrc",
        "output": "null",
        "priority": str(priority),
    }


def write_state(home: Path, priorities: dict[str, int]) -> None:
    now = time.time()
    doc = {
        n: {"config": config(p), "saved_at": now, "status": "active"} for n, p in priorities.items()
    }
    path = home / "active_streams.json"
    path.write_text(json.dumps(doc, indent=1))
    path.chmod(0o600)


def cpu_of_one(root: Path) -> float:
    """Percent of a core one stream takes here, alone."""
    home = root / "probe"
    home.mkdir(mode=0o700)
    write_state(home, {"probe": 0})
    daemon = Daemon(home)
    try:
        daemon.wait_ready()
        daemon.wait_all_progress(1, 30)
        pid = daemon.streams()[0]["pid"]
        proc = psutil.Process(pid)
        time.sleep(6)
        before, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
        time.sleep(12)
        return 100 * (sum(proc.cpu_times()[:2]) - before) / (time.monotonic() - t0)
    finally:
        daemon.stop()


class Watch:
    """Each second: every stream's status and frames, and the top one's recent rate."""

    def __init__(self, daemon: Daemon, top: str) -> None:
        self.daemon, self.top = daemon, top
        self.frames: collections.deque[tuple[float, int]] = collections.deque()
        self.status: dict[str, str] = {}
        self.sheds: collections.Counter[str] = collections.Counter()
        self.backs: collections.Counter[str] = collections.Counter()
        self.t0 = time.monotonic()
        self.real_time_at: float | None = None
        self.after: list[tuple[float, int]] = []  # the top's frames once back in real time
        self.shed_times: list[float] = []

    def rate(self) -> float | None:
        points = self.frames
        if len(points) < 3 or points[-1][0] - points[0][0] < WINDOW * 0.8:
            return None
        n = len(points)
        mt, mf = sum(t for t, _ in points) / n, sum(f for _, f in points) / n
        spread = sum((t - mt) ** 2 for t, _ in points)
        return sum((t - mt) * (f - mf) for t, f in points) / spread

    def sample(self) -> None:
        now = time.monotonic()
        for s in self.daemon.streams():
            name, status = s["name"], s["status"]
            before = self.status.get(name)
            if status == "shed" and before not in (None, "shed"):
                self.sheds[name] += 1
                self.shed_times.append(now - self.t0)
            elif status != "shed" and before == "shed":  # sampled starting or running
                self.backs[name] += 1
            if status == "shed" and before is None:
                self.sheds[name] += 1  # held back at restore
            self.status[name] = status
            if name == self.top:
                frames = int(s.get("frames") or 0)
                if self.frames and frames < self.frames[-1][1]:
                    self.frames.clear()  # a new FFmpeg
                self.frames.append((now, frames))
                while self.frames[0][0] < now - WINDOW:
                    self.frames.popleft()
        rate = self.rate()
        good = rate is not None and rate >= 0.95 * FPS
        if self.real_time_at is None and good:
            self.real_time_at = now - self.t0
        if self.real_time_at is not None and self.frames:
            self.after.append(self.frames[-1])

    def kept_up(self, span: float = 60.0) -> tuple[float | None, float | None]:
        """The top's frames once back, against its frame rate: overall, and the worst
        ``span`` seconds (a new FFmpeg of it would start the count again: none is expected)."""
        points = self.after
        if len(points) < 2 or points[-1][0] - points[0][0] < span:
            return None, None
        overall = (points[-1][1] - points[0][1]) / ((points[-1][0] - points[0][0]) * FPS)
        worst, j = float("inf"), 0
        for i, (t, f) in enumerate(points):
            while points[j][0] < t - span:
                j += 1
            if t - points[0][0] >= span and i > j:
                worst = min(worst, (f - points[j][1]) / ((t - points[j][0]) * FPS))
        return overall, worst

    def run(self, seconds: float, until_real_time: bool = False) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            if until_real_time and self.real_time_at is not None:
                return
            time.sleep(1.0)


def sized(root: Path) -> tuple[float, int]:
    """One stream's CPU, and how many need about twice the cores."""
    one = cpu_of_one(root)
    return one, max(4, min(MOST, math.ceil(2 * CORES * 100 / one)))


def raised(shed_after: float) -> dict[str, Any]:
    """N equal streams, then one raised to priority 10: time to real time, sheds."""
    os.environ["STREAMALCHEMY_SHED_AFTER"] = f"{shed_after:g}"
    with temp_home("raise") as root:
        one, n = sized(root)
        log(f"one stream takes {one:.0f}% of a core: {n} streams of priority 0")
        home = root / "h"
        home.mkdir(mode=0o700)
        write_state(home, {f"e{i:02d}": 0 for i in range(n)})
        daemon = Daemon(home)
        try:
            daemon.wait_ready()
            equal = Watch(daemon, "e00")
            equal.run(EQUAL_FOR)
            c = config(10)
            run_cmd(
                [sys.executable, "-m", "streamalchemy", "start", "e00", "--testsrc", "--replace",
                 "--resolution", c["resolution"], "--fps", c["target_fps"],
                 "--output", "null", "--priority", "10"],
                env_for(home), home,
            )  # fmt: skip
            watch = Watch(daemon, "e00")
            watch.run(300, until_real_time=True)
            watch.run(30)  # and then: more sheds, or flapping?
        finally:
            daemon.stop(timeout=60)
    return {
        "cores": CORES,
        "cpu_of_one": round(one, 1),
        "streams": n,
        "shed_after": shed_after,
        "shed_while_equal": sum(equal.sheds.values()),
        "real_time_after": watch.real_time_at,
        "last_shed_at": max(watch.shed_times, default=None),
        "shed": sum(watch.sheds.values()),
        "brought_back": sum(watch.backs.values()),
        "flapped": sorted(n for n, c in watch.sheds.items() if c > 1),
    }


def raise_table(r: dict[str, Any]) -> str:
    back = r["real_time_after"]
    rows = [
        ("machine", f"{r['cores']} cores; one 480p30 libx264 test pattern: "
                    f"{r['cpu_of_one']:.0f}% of a core"),
        ("streams", f"{r['streams']}, all priority 0, STREAMALCHEMY_SHED_AFTER="
                    f"{r['shed_after']:g}"),
        (f"shed in {EQUAL_FOR:g} s of equal priorities", str(r["shed_while_equal"])),
        ("one raised to 10 (`start --replace`): in real time after (10 s of frames)",
         "never" if back is None else f"{back:.0f} s"),
        ("shed for it (last one at)", f"{r['shed']} ({r['last_shed_at'] or 0:.0f} s)"),
        ("in the 30 s after: brought back, flapped",
         f"{r['brought_back']}, {', '.join(r['flapped']) or 'none'}"),
    ]  # fmt: skip
    lines = ["| measure | result |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines)


def overload(minutes: float, shed_after: float) -> dict[str, Any]:
    os.environ["STREAMALCHEMY_SHED_AFTER"] = f"{shed_after:g}"
    with temp_home("overload") as root:
        one, n = sized(root)
        mids = max(1, n // 4)
        priorities = {f"o{i:02d}": 10 if i == 0 else 5 if i <= mids else 0 for i in range(n)}
        log(f"one stream takes {one:.0f}% of a core: {n} streams ({mids} at 5, 1 at 10)")
        home = root / "h"
        home.mkdir(mode=0o700)
        write_state(home, priorities)
        daemon = Daemon(home)
        try:
            daemon.wait_ready()
            watch = Watch(daemon, "o00")
            watch.run(minutes * 60)
        finally:
            daemon.stop(timeout=60)
        remembered = json.loads((home / "shedding.json").read_text())["cpu"]
        daemon = Daemon(home)  # a second launch: what it remembers
        try:
            daemon.wait_ready()
            again = Watch(daemon, "o00")
            again.run(180, until_real_time=True)
            held = sorted(n for n, s in again.status.items() if s == "shed")
        finally:
            daemon.stop(timeout=60)
    shed_by_priority = collections.Counter(priorities[n] for n in watch.sheds)
    return {
        "cores": CORES,
        "cpu_of_one": round(one, 1),
        "cpu_remembered": round(statistics.median(remembered.values()), 1) if remembered else None,
        "streams": n,
        "priorities": dict(collections.Counter(priorities.values())),
        "minutes": minutes,
        "shed_after": shed_after,
        "top_real_time_after": watch.real_time_at,
        "top_frames_after": watch.kept_up(),
        "last_shed_at": max(watch.shed_times, default=None),
        "shed": sum(watch.sheds.values()),
        "shed_streams": len(watch.sheds),
        "shed_by_priority": dict(shed_by_priority),
        "brought_back": sum(watch.backs.values()),
        "flapped": sorted(n for n, c in watch.sheds.items() if c > 1),
        "shed_at_end": sorted(n for n, s in watch.status.items() if s == "shed"),
        "relaunch_real_time_after": again.real_time_at,
        "relaunch_held": len(held),
    }


def table(r: dict[str, Any]) -> str:
    def secs(v: float | None) -> str:
        return "never" if v is None else f"{v:.0f} s"

    overall, worst = r["top_frames_after"]
    counts = r["priorities"]
    demand = r["streams"] * r["cpu_of_one"] / (100 * r["cores"])
    mix = f"priority 10: 1, 5: {counts.get(5, 0)}, 0: {counts.get(0, 0)}"
    rows = [
        ("machine", f"{r['cores']} cores; one 480p30 libx264 test pattern: "
                    f"{r['cpu_of_one']:.0f}% of a core"),
        ("streams", f"{r['streams']} ({mix}): {demand:.1f}x what the cores can give"),
        ("one stream's need as the daemon measured it under load (median)",
         f"{r['cpu_remembered']}% of a core"),
        ("run", f"{r['minutes']:g} minutes, STREAMALCHEMY_SHED_AFTER={r['shed_after']:g}"),
        ("top priority back in real time after the restore", secs(r["top_real_time_after"])),
        ("top priority from then on: frames / its frame rate",
         "n/a" if overall is None else
         f"{100 * overall:.1f}% overall, {100 * worst:.1f}% in its worst minute"),
        ("last shed after the restore", secs(r["last_shed_at"])),
        ("streams shed",
         f"{r['shed_streams']} ({r['shed']} sheds; by priority: {r['shed_by_priority']})"),
        ("brought back", str(r["brought_back"])),
        ("flapped (shed more than once)", ", ".join(r["flapped"]) or "none"),
        ("shed at the end", str(len(r["shed_at_end"]))),
        ("second launch: top priority in real time after", secs(r["relaunch_real_time_after"])),
        ("second launch: kept shed or held back at restore", str(r["relaunch_held"])),
    ]  # fmt: skip
    lines = ["| measure | result |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--shed-after", type=float, default=20.0)
    p.add_argument("--write", action="store_true", help="put the table in docs/benchmarks.md")
    p.add_argument("--raise", dest="raise_", action="store_true", help="the raise scenario only")
    args = p.parse_args(argv)
    if args.raise_:
        return raise_main(args.shed_after, args.write)
    how = f"`bash bench/run.sh --overload --minutes {args.minutes:g} --write`"
    title = "## Overload: shedding by priority (bench/overload.py)"
    return report(lambda: overload(args.minutes, args.shed_after), table, args.write,
                  (BEGIN, END), title, how)  # fmt: skip


def report(
    run: Callable[[], dict[str, Any]],
    tabled: Callable[[dict[str, Any]], str],
    write: bool,
    markers: tuple[str, str],
    title: str,
    how: str,
) -> int:
    """Run a scenario, print its figures and table; with ``write``, put the table in
    docs/benchmarks.md between ``markers``."""
    try:
        result = run()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    text = tabled(result)
    print(text)
    if write:
        begin, end = markers
        block = f"{begin}\n{title}\n\n{how}, measured {time.strftime('%Y-%m-%d')}.\n\n{text}\n{end}"
        write_section(block, begin, end)
    return 0


def raise_main(shed_after: float, write: bool) -> int:
    return report(
        lambda: raised(shed_after),
        raise_table,
        write,
        (RAISE_BEGIN, RAISE_END),
        "### One stream raised above its equals",
        "`bash bench/run.sh --overload --raise --write`",
    )


if __name__ == "__main__":
    sys.exit(main())
