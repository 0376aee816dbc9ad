"""Shedding by priority with the real daemon and real FFmpeg on this machine.

Sized from one re-encoded test pattern's measured CPU: enough equal-priority streams
to need about twice the cores. ``STREAMALCHEMY_SHED_AFTER`` is 5 s to keep it short.
Every wait is bounded; "real time" is frames at the stream's frame rate, measured
from outside over ten seconds.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fakes import pattern_config

from conftest import Daemon, cli, wait_for
from streamalchemy.client.connection import Client
from streamalchemy.settings import load_settings

pytestmark = pytest.mark.e2e

FPS = 30
RESOLUTION = "1080"  # fewer, heavier streams: fewer sheds to wait for
OPTIONS = ["--testsrc", "--resolution", RESOLUTION, "--fps", str(FPS), "--output", "null"]
CORES = os.cpu_count() or 1
MOST = 20  # streams at the most, however cheap one is


@pytest.fixture
def shed_after(monkeypatch: pytest.MonkeyPatch, tmp_home: Path) -> Path:
    monkeypatch.setenv("STREAMALCHEMY_SHED_AFTER", "5")
    return tmp_home


def streams() -> dict[str, dict[str, Any]]:
    doc = Client(load_settings()).request("GET", "/streams", autostart=False, timeout=30)
    return {s["name"]: s for s in doc["streams"]}


def start(name: str, priority: int = 0, *extra: str) -> None:
    proc = cli("start", name, *OPTIONS, "--priority", str(priority), *extra)
    assert proc.returncode == 0, proc.stderr


def frame_rate(name: str, seconds: float = 10.0) -> float:
    """Frames per second over ``seconds``: the slope of its frame count when it changes."""
    points: list[tuple[float, int]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        frames = int(streams()[name]["frames"] or 0)
        if not points or frames != points[-1][1]:
            points.append((time.monotonic(), frames))
        time.sleep(0.2)
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt, mf = sum(t for t, _ in points) / n, sum(f for _, f in points) / n
    spread = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (f - mf) for t, f in points) / spread


def in_real_time(name: str) -> bool:
    return streams()[name]["status"] == "running" and frame_rate(name) >= 0.95 * FPS


def cpu_of_one() -> float:
    """Percent of a core that one re-encoded test pattern takes here, measured alone."""
    start("probe")
    pid = streams()["probe"]["pid"]
    proc = psutil.Process(pid)
    time.sleep(4)  # past the encoder's start
    before, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    time.sleep(6)
    used = 100 * (sum(proc.cpu_times()[:2]) - before) / (time.monotonic() - t0)
    assert cli("stop", "probe").returncode == 0
    return used


@functools.cache
def count_for_twice_the_cores() -> int:
    """Measured once per run (a daemon must be up for the first call)."""
    one = cpu_of_one()
    count = max(4, min(MOST, math.ceil(2 * CORES * 100 / one)))
    print(f"one stream: {one:.0f}% of a core; {count} streams for {CORES} cores")
    return count


def shed_names() -> list[str]:
    return sorted(n for n, s in streams().items() if s["status"] == "shed")


def test_priorities_decide_who_keeps_real_time(shed_after: Path) -> None:
    d = Daemon(shed_after)
    try:
        count = count_for_twice_the_cores()
        names = [f"s{i}" for i in range(count)]
        for name in names:
            start(name)
        # Equal priorities, twice the machine: every stream slows down, none is shed.
        deadline = time.monotonic() + 15  # three times SHED_AFTER
        while time.monotonic() < deadline:
            assert shed_names() == []
            time.sleep(1)

        start("s0", 10, "--replace")  # one stream matters more now
        wait_for(lambda: shed_names() and in_real_time("s0"), 150, "s0 back in real time")
        shed = shed_names()
        saved = json.loads(cli("saved", "--json").stdout)["streams"]
        assert set(shed) <= set(saved)  # shed, and still saved
        one = streams()[shed[0]]
        assert one["pid"] is None and "lack of CPU" in one["last_error"]
        assert "lack of CPU" in cli("logs", shed[0], "-n", "50").stdout
        shown = json.loads(cli("show", shed[0], "--json").stdout)
        assert shown["stream"]["status"] == "shed"
        info = [line for line in metrics_text().splitlines() if f'name="{shed[0]}"' in line]
        assert any('status="shed"' in line for line in info if "stream_info" in line), info
        refused = cli("start", shed[0], *OPTIONS)  # it exists: shed is not gone
        assert refused.returncode == 5, refused.stderr
        if len(shed) > 1:  # a user's stop acts on a shed stream as on any other
            assert cli("stop", shed[-1]).returncode == 0
            assert shed[-1] not in json.loads(cli("saved", "--json").stdout)["streams"]
            shed = shed[:-1]

        running_low = [n for n, s in streams().items() if n != "s0" and s["status"] == "running"]
        if running_low:
            assert cli("stop", *running_low).returncode == 0
        wait_for(lambda: set(shed) & running_now(), 120, "a shed stream back")
        back = sorted(set(shed) & running_now())
        assert "brought back" in cli("logs", back[0], "-n", "50").stdout
        assert streams()["s0"]["status"] == "running"
    finally:
        d.stop(timeout=60)


def pattern(priority: int) -> dict[str, object]:
    config = pattern_config(resolution=RESOLUTION, target_fps=str(FPS), priority=str(priority))
    return {"config": config, "saved_at": time.time(), "status": "active"}


def test_a_restore_of_an_overloaded_set_ends_with_the_top_priority_in_real_time(
    shed_after: Path,
) -> None:
    if count_for_twice_the_cores.cache_info().currsize == 0:
        d = Daemon(shed_after)
        try:
            count_for_twice_the_cores()
        finally:
            d.stop(timeout=60)
    count = count_for_twice_the_cores()
    state = shed_after / "active_streams.json"
    state.write_text(json.dumps({f"r{i}": pattern(10 if i == 0 else 0) for i in range(count)}))
    state.chmod(0o600)

    d = Daemon(shed_after)  # knows nothing of their CPU yet: starts all, then sheds
    try:  # what will not fit goes at once, as soon as the figures are in
        wait_for(lambda: shed_names() and in_real_time("r0"), 90, "r0 in real time")
    finally:
        d.stop(timeout=60)

    d = Daemon(shed_after)  # remembers: what was shed stays shed, reported as skipped
    try:
        wait_for(lambda: in_real_time("r0"), 60, "r0 in real time after a restart")
        assert shed_names()
        results = json.loads(cli("restore", "--json").stdout)["results"]
        for name in shed_names():
            assert results[name]["result"] == "skipped"
            assert "lack of CPU" in results[name]["reason"]
    finally:
        d.stop(timeout=60)


def running_now() -> set[str]:
    return {n for n, s in streams().items() if s["status"] == "running"}


def metrics_text() -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(load_settings().socket))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace")
