"""Restarts and stalls with the real daemon, real FFmpeg and a receiver that comes and goes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import Daemon, RtspReceiver, cli, cli_json, wait_for

pytestmark = pytest.mark.e2e


def stream(name: str) -> dict[str, object]:
    code, doc = cli_json("list")
    assert code == 0
    return next(s for s in doc["streams"] if s["name"] == name)


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


def test_duration_ends_stream_and_leaves_file(daemon: Daemon, tmp_home: Path) -> None:
    proc = cli(
        "start", "short", "--testsrc", "--resolution", "480", "--output", "null", "--duration", "3s"
    )
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: stream("short")["status"] == "finished", 15, "the stream to finish")
    assert cli_json("saved")[1]["streams"] == {}


def test_a_paused_daemon_kills_nothing(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMALCHEMY_STALL_TIMEOUT", "2")
    d = Daemon(tmp_home)
    try:
        proc = cli("start", "p", "--testsrc", "--resolution", "480", "--output", "null")
        assert proc.returncode == 0, proc.stderr
        pid = stream("p")["pid"]
        os.kill(d.pid, signal.SIGSTOP)  # longer than the stall timeout
        time.sleep(5)
        os.kill(d.pid, signal.SIGCONT)
        time.sleep(3)
        assert stream("p")["pid"] == pid and stream("p")["restarts"] == 0
        assert "stalled" not in cli("logs", "p").stdout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(d.pid, signal.SIGCONT)
        d.stop()
