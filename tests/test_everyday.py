"""Everyday use through the real CLI, daemon and FFmpeg: restart, show, logs of all,
the source defaults, the end time of a limited stream, and daemon status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import streamalchemy
from conftest import FFPROBE, Daemon, cli, cli_json, kill_tree, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]

SMALL = ("--testsrc", "--output", "null", "--resolution", "480", "--fps", "10")


def saved(home: Path) -> dict[str, dict[str, object]]:
    return json.loads((home / "active_streams.json").read_text())  # type: ignore[no-any-return]


def one_stderr_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_restart_keeps_the_deadline_and_show_tells_everything(
    daemon: Daemon, tmp_home: Path
) -> None:
    proc = cli("start", "cam", *SMALL, "--duration", "2m")
    assert proc.returncode == 0, proc.stderr
    # stdout's first line stays the output, for out=$(streamalchemy start ...); the end
    # time of a limited stream goes to stderr.
    assert proc.stdout.splitlines() == ["null"]
    assert "cam runs until " in proc.stderr and "(2m)" in proc.stderr
    assert cli("start", "other", *SMALL).returncode == 0
    saved_at = saved(tmp_home)["cam"]["saved_at"]

    code, doc = cli_json("show", "cam")
    assert code == 0, doc
    first_pid = doc["stream"]["pid"]
    assert doc["stream"]["status"] in ("starting", "running") and first_pid
    assert doc["spec"]["duration"] == "2m"  # not 1m59s
    assert (doc["spec"]["resolution"], doc["spec"]["fps"]) == (480, 10)
    assert doc["deadline"] == pytest.approx(saved_at + 120)
    assert doc["log_file"].endswith("cam.log") and isinstance(doc["exits"], list)
    human = cli("show", "cam")
    assert human.returncode == 0 and "2m" in human.stdout and "cam.log" in human.stdout

    code, doc = cli_json("restart", "cam")
    assert (code, doc) == (0, {"success": True, "restarted": ["cam"]})
    code, doc = cli_json("show", "cam")
    assert doc["stream"]["pid"] != first_pid
    assert doc["stream"]["saved_at"] == saved_at  # the deadline is kept
    assert saved(tmp_home)["cam"]["saved_at"] == saved_at
    assert 0 < doc["stream"]["remaining_seconds"] <= 120
    (last,) = doc["exits"]
    assert last["reason"] == "restarted by the user" and last["at"] > saved_at

    code, doc = cli_json("restart", "--all")
    assert (code, sorted(doc["restarted"])) == (0, ["cam", "other"])

    missing = cli("restart", "nope")
    assert missing.returncode == 4
    assert "no such stream: nope" in one_stderr_line(missing)
    assert cli("show", "nope").returncode == 4

    # Human output of saved and list shows the duration as given.
    assert " 2m " in cli("saved").stdout


def test_show_a_saved_stream_while_the_daemon_is_down(tmp_home: Path) -> None:
    entry = {
        "config": {
            "video_codec": "h264",
            "resolution": "1080",
            "target_fps": "30",
            "stream_type": "rtsp",
            "source_url": "rtsp://user:secret@cam.example/s",
            "duration_hours": "0.033333",
        },
        "saved_at": time.time(),
        "status": "active",
    }
    (tmp_home / "active_streams.json").write_text(json.dumps({"cam": entry}))
    code, doc = cli_json("show", "cam")
    assert code == 0, doc
    assert doc["stream"]["status"] == "saved" and doc["stream"]["pid"] is None
    assert "secret" not in json.dumps(doc)
    assert doc["spec"]["url"] == "rtsp://***:***@cam.example/s"
    assert doc["spec"]["duration"] == "2m"
    assert "daemon is not running" in doc["stream"]["last_error"]
    # Looking does not start the daemon (which would restore every stream).
    assert not (tmp_home / "streamalchemy.sock").exists()


def test_logs_of_every_stream_prefixed_and_followed(daemon: Daemon) -> None:
    for name in ("a1", "b2"):
        assert cli("start", name, *SMALL).returncode == 0
    proc = cli("logs", "-n", "5")
    assert proc.returncode == 0, proc.stderr
    prefixes = {line.split(" | ", 1)[0].strip() for line in proc.stdout.splitlines()}
    assert prefixes == {"a1", "b2"}
    code, doc = cli_json("logs", "-n", "1")
    assert code == 0 and set(doc["logs"]) == {"a1", "b2"}

    follower = subprocess.Popen(
        [sys.executable, "-m", "streamalchemy", "logs", "-n", "0", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        logs = {str(daemon.home / "logs" / "streams" / f"{n}.log") for n in ("a1", "b2")}

        def following() -> bool:  # both files open: nothing written from now on is missed
            try:
                return logs <= {f.path for f in psutil.Process(follower.pid).open_files()}
            except psutil.Error:
                return False

        wait_for(following, 20, "the follower to open both logs")
        assert cli("restart", "a1", "b2").returncode == 0
        seen: set[str] = set()
        assert follower.stdout is not None
        deadline = time.monotonic() + 20
        while seen != {"a1", "b2"} and time.monotonic() < deadline:
            line = follower.stdout.readline()
            if "restarted by the user" in line:
                seen.add(line.split(" | ", 1)[0].strip())
        assert seen == {"a1", "b2"}
        os.killpg(follower.pid, signal.SIGINT)
        assert follower.wait(10) in (0, 130)
    finally:
        kill_tree(follower)  # type: ignore[arg-type]


def test_a_reencode_keeps_the_source_size_and_rate(
    daemon: Daemon, sample_video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rec.ts"
    proc = cli("start", "rec", "--file", str(sample_video), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: out.exists() and out.stat().st_size > 50_000, 30, "the recording")
    assert cli("stop", "rec").returncode == 0
    probe = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height,r_frame_rate", "-of", "csv=p=0", str(out)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    # sample_video is 320x240 at 15 fps: no scale, no fps filter by default.
    assert set(probe.stdout.split()) == {"320,240,15/1"}


def test_daemon_status_names_home_version_and_installation(daemon: Daemon, tmp_home: Path) -> None:
    code, doc = cli_json("daemon", "status")
    assert code == 0
    assert doc["home"] == str(tmp_home)
    assert doc["version"] == streamalchemy.__version__
    assert doc["install_path"] == os.path.dirname(os.path.abspath(streamalchemy.__file__))
    human = cli("daemon", "status").stdout
    assert str(tmp_home) in human and doc["install_path"] in human
