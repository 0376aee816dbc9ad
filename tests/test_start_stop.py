"""start / stop / list through the real CLI, the real daemon and real FFmpeg."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Daemon, RtspReceiver, cli, cli_json, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]


def saved_names(home: Path) -> set[str]:
    path = home / "active_streams.json"
    return set(json.loads(path.read_text())) if path.exists() else set()


def stream_status(name: str) -> str | None:
    code, doc = cli_json("list")
    assert code == 0, doc
    return next((s["status"] for s in doc["streams"] if s["name"] == name), None)


def test_start_publishes_to_rtsp_then_stop_removes_it(
    daemon: Daemon, rtsp_receiver: RtspReceiver, tmp_home: Path
) -> None:
    proc = cli(
        "start",
        "cam1",
        "--testsrc",
        "--resolution",
        "480",
        "--fps",
        "10",
        "--output",
        rtsp_receiver.url,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == rtsp_receiver.url
    wait_for(lambda: rtsp_receiver.frames > 10, 20, "frames at the RTSP receiver")

    code, doc = cli_json("list")
    assert code == 0
    (stream,) = doc["streams"]
    assert stream["name"] == "cam1" and stream["status"] == "running"
    assert stream["pid"] and stream["encoder"] == "libx264"
    assert saved_names(tmp_home) == {"cam1"}

    code, doc = cli_json("stop", "cam1")
    assert (code, doc) == (0, {"success": True, "stopped": ["cam1"]})
    assert cli_json("list")[1]["streams"] == []
    assert saved_names(tmp_home) == set()
    assert daemon.ffmpeg_children() == []


def test_start_json_shape_and_defaults(daemon: Daemon, sample_video: Path) -> None:
    code, doc = cli_json(
        "start", "clip", "--file", str(sample_video), "--output", "null", "--resolution", "480"
    )
    assert code == 0, doc
    stream = doc["stream"]
    for key in (
        "name",
        "status",
        "pid",
        "source",
        "output",
        "encoder",
        "saved_at",
        "started_at",
        "remaining_seconds",
        "restarts",
        "fps",
        "bitrate_kbps",
        "speed",
        "cpu_percent",
        "memory_mb",
        "last_error",
    ):
        assert key in stream
    assert stream["remaining_seconds"] is None
    assert stream["status"] in ("starting", "running")
    assert stream["output"] == "null"


def test_duplicate_name_exits_5_and_replace_swaps_pid(daemon: Daemon) -> None:
    assert (
        cli("start", "dup", "--testsrc", "--output", "null", "--resolution", "480").returncode == 0
    )
    first = cli_json("list")[1]["streams"][0]["pid"]
    proc = cli("start", "dup", "--testsrc", "--output", "null")
    assert proc.returncode == 5
    assert len(proc.stderr.strip().splitlines()) == 1 and "already exists" in proc.stderr
    proc = cli("start", "dup", "--testsrc", "--output", "null", "--resolution", "480", "--replace")
    assert proc.returncode == 0, proc.stderr
    second = cli_json("list")[1]["streams"][0]["pid"]
    assert second != first


def test_failed_replacement_brings_the_old_stream_back(daemon: Daemon, tmp_home: Path) -> None:
    from conftest import free_port

    args = ("start", "keep", "--testsrc", "--resolution", "480")
    assert cli(*args, "--output", "null").returncode == 0
    refused = f"rtsp://127.0.0.1:{free_port()}/keep"
    proc = cli(*args, "--output", refused, "--replace")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "runs again" in proc.stderr
    wait_for(lambda: cli_json("list")[1]["streams"][0]["status"] == "running", 20, "the old one")
    assert cli_json("list")[1]["streams"][0]["output"] == "null"
    saved = json.loads((tmp_home / "active_streams.json").read_text())
    assert saved["keep"]["config"]["output"] == "null"


def test_unknown_stream_exits_4(daemon: Daemon) -> None:
    proc = cli("stop", "ghost")
    assert proc.returncode == 4
    assert len(proc.stderr.strip().splitlines()) == 1
    code, doc = cli_json("stop", "ghost")
    assert code == 4 and doc["success"] is False and "ghost" in doc["message"]


def test_bad_input_exits_2_and_writes_nothing(daemon: Daemon, tmp_home: Path) -> None:
    cases = [
        ("start", "bad name!", "--testsrc"),
        ("start", "x" * 65, "--testsrc"),
        ("start", "ok", "--testsrc", "--fps", "0"),
        ("start", "ok", "--testsrc", "--fps", "121"),
        ("start", "ok", "--testsrc", "--codec", "vp9"),
        ("start", "ok", "--testsrc", "--resolution", "999"),
        ("start", "ok", "--testsrc", "--duration", "-1"),
        ("start", "ok", "--testsrc", "--duration", "soon"),
        ("start", "ok", "--file", str(tmp_home / "missing.mp4")),
        ("start", "ok", "--testsrc", "--url", "rtsp://x/y"),
        ("start", "ok"),
        ("start", "ok", "--url", "file:///etc/passwd"),
        ("start", "ok", "--testsrc", "--codec", "copy", "--resolution", "720"),
    ]
    for args in cases:
        proc = cli(*args, "--output", "null")
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    assert saved_names(tmp_home) == set()
    assert cli_json("list")[1]["streams"] == []


def test_missing_file_json_names_the_file(daemon: Daemon, tmp_home: Path) -> None:
    missing = tmp_home / "nope.mp4"
    code, doc = cli_json("start", "f", "--file", str(missing), "--output", "null")
    assert code == 2 and doc["success"] is False and str(missing) in doc["message"]


def test_refused_rtsp_server_fails_with_hint(daemon: Daemon) -> None:
    from conftest import free_port

    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    proc = cli("start", "cam", "--testsrc", "--resolution", "480", "--output", url)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "refused" in line and "MediaMTX" in line and "--output hls" in line
    assert cli_json("list")[1]["streams"] == []
    assert daemon.ffmpeg_children() == []


def test_sixteen_concurrent_starts_all_saved(
    daemon: Daemon, tmp_home: Path, sample_video: Path
) -> None:
    names = [f"c{i:02d}" for i in range(16)]

    def start(name: str) -> int:
        return cli(
            "start",
            name,
            "--file",
            str(sample_video),
            "--codec",
            "copy",
            "--output",
            "null",
            timeout=120,
        ).returncode

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(start, names))
    assert codes == [0] * 16
    assert saved_names(tmp_home) == set(names)
    running = {s["name"] for s in cli_json("list")[1]["streams"]}
    assert running == set(names)
    assert cli_json("stop", "--all")[0] == 0
    assert saved_names(tmp_home) == set()


def test_hls_output_and_credentials_masked(daemon: Daemon, tmp_home: Path) -> None:
    proc = cli("start", "web", "--testsrc", "--resolution", "480", "--fps", "10", "--output", "hls")
    assert proc.returncode == 0, proc.stderr
    playlist = tmp_home / "hls" / "web" / "index.m3u8"
    assert proc.stdout.strip() == str(playlist)
    wait_for(playlist.exists, 20, "the HLS playlist")

    proc = cli(
        "start",
        "relay",
        "--url",
        "rtsp://alice:s3cret@127.0.0.1:9/cam",
        "--output",
        "null",
        "--resolution",
        "480",
    )
    assert "s3cret" not in proc.stdout + proc.stderr
    listing = cli("list", "--json").stdout + cli("list", "--wide").stdout
    assert "s3cret" not in listing
    logs = cli("logs", "relay").stdout
    assert "s3cret" not in logs
    daemon_log = (tmp_home / "logs" / "daemon.log").read_text()
    assert "s3cret" not in daemon_log


def test_file_modes(daemon: Daemon, tmp_home: Path) -> None:
    assert cli("start", "m", "--testsrc", "--output", "null", "--resolution", "480").returncode == 0
    state = tmp_home / "active_streams.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_home / "streamalchemy.sock").st_mode) == 0o600
    # Logs and the children record (FFmpeg argv, credentials included) are private too.
    for path in [tmp_home / "children.json", *(tmp_home / "logs").rglob("*")]:
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_logs_shows_lifecycle(daemon: Daemon) -> None:
    assert (
        cli("start", "lg", "--testsrc", "--output", "null", "--resolution", "480").returncode == 0
    )
    code, doc = cli_json("logs", "lg", "-n", "5")
    assert code == 0 and any("started FFmpeg" in line for line in doc["lines"])
    assert cli("logs", "nosuch").returncode == 4
