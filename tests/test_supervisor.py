"""Restarts, backoff and stall detection, with real FFmpeg and a receiver that comes and goes."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from conftest import Daemon, RtspReceiver, cli, cli_json, wait_for
from streamalchemy.supervisor import Backoff, should_restart


def stream(name: str) -> dict[str, object]:
    code, doc = cli_json("list")
    assert code == 0
    return next(s for s in doc["streams"] if s["name"] == name)


def test_backoff_doubles_to_a_cap_with_jitter_and_resets_when_healthy() -> None:
    backoff = Backoff(rand=random.Random(7))
    delays = [backoff.next_delay(ran_for=0.5) for _ in range(10)]
    caps = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    for delay, cap in zip(delays, caps, strict=True):
        assert cap / 2 <= delay <= cap
    assert backoff.next_delay(ran_for=120) <= 1.0  # a healthy minute starts over


def test_restart_policies() -> None:
    assert should_restart("on-failure", 1, stalled=False)
    assert should_restart("on-failure", 0, stalled=True)
    assert not should_restart("on-failure", 0, stalled=False)
    assert should_restart("always", 0, stalled=False)
    assert not should_restart("never", 1, stalled=True)


@pytest.mark.e2e
def test_receiver_goes_away_and_comes_back(daemon: Daemon) -> None:
    receiver = RtspReceiver()
    try:
        proc = cli(
            "start",
            "cam",
            "--testsrc",
            "--resolution",
            "480",
            "--fps",
            "10",
            "--output",
            receiver.url,
        )
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: receiver.frames > 5, 20, "frames at the first receiver")
    finally:
        receiver.stop()
    wait_for(lambda: stream("cam")["restarts"] >= 2, 30, "the stream to retry")
    assert stream("cam")["status"] in ("retrying", "starting")
    assert stream("cam")["last_error"]

    receiver = RtspReceiver(port=receiver.port)
    try:
        wait_for(lambda: receiver.frames > 5, 40, "frames at the receiver that came back")
        wait_for(lambda: stream("cam")["status"] == "running", 10, "running again")
    finally:
        receiver.stop()


@pytest.mark.e2e
def test_stalled_ffmpeg_is_restarted(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMALCHEMY_STALL_TIMEOUT", "2")
    d = Daemon(tmp_home)
    try:
        assert (
            cli("start", "st", "--testsrc", "--resolution", "480", "--output", "null").returncode
            == 0
        )
        pid = stream("st")["pid"]
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGSTOP)  # frozen: alive, but no progress
        wait_for(lambda: stream("st")["restarts"] >= 1, 20, "the stalled stream to restart")
        wait_for(lambda: stream("st")["status"] == "running", 20, "running again")
        assert stream("st")["pid"] != pid
        assert "stalled" in cli("logs", "st").stdout
    finally:
        d.stop()


@pytest.mark.e2e
def test_duration_ends_stream_and_leaves_file(daemon: Daemon, tmp_home: Path) -> None:
    proc = cli(
        "start", "short", "--testsrc", "--resolution", "480", "--output", "null", "--duration", "3s"
    )
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: stream("short")["status"] == "finished", 15, "the stream to finish")
    assert cli_json("saved")[1]["streams"] == {}
