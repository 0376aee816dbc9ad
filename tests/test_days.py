"""Streams that run for days, with the real daemon and FFmpeg: bounded HLS, recordings
that are never overwritten, relays that outlive their source's end, capped logs."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FFPROBE, Daemon, RtspReceiver, cli, cli_json, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]

SMALL = ("--resolution", "480", "--fps", "10")


def stream(name: str) -> dict[str, Any]:
    code, doc = cli_json("list")
    assert code == 0, doc
    return next(s for s in doc["streams"] if s["name"] == name)


def kill_ffmpeg(name: str) -> int:
    pid = stream(name)["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    return pid


def running_again(name: str, old_pid: int) -> bool:
    s = stream(name)
    return s["status"] == "running" and s["pid"] not in (None, old_pid) and s["frames"] > 5


def playable(path: Path) -> bool:
    proc = subprocess.run(
        [
            *(FFPROBE, "-v", "error", "-count_packets", "-select_streams", "v:0"),
            *("-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode == 0 and int(proc.stdout.strip() or 0) > 0


def test_hls_keeps_a_bounded_number_of_files_and_its_numbering(
    daemon: Daemon, tmp_home: Path
) -> None:
    assert cli("start", "h", "--testsrc", *SMALL, "--output", "hls").returncode == 0
    hls = tmp_home / "hls" / "h"
    playlist = hls / "index.m3u8"
    sequences: list[int] = []
    most = 0

    def watch(until_segment: int) -> bool:
        nonlocal most
        most = max(most, len(list(hls.iterdir())))
        with contextlib.suppress(FileNotFoundError):
            found = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist.read_text())
            if found:
                sequences.append(int(found[1]))
        return any(f.name >= f"segment_{until_segment:05d}.ts" for f in hls.iterdir())

    wait_for(lambda: watch(5), 30, "six segments", interval=0.2)
    pid = kill_ffmpeg("h")  # a restart continues the numbering over the files there
    wait_for(lambda: watch(12), 40, "the playlist to cycle", interval=0.2)
    assert pid != stream("h")["pid"]
    assert sequences == sorted(sequences) and sequences[-1] > 3, sequences
    assert most <= 6 + 6, most  # the playlist's segments plus 6
    assert not (hls / "segment_00000.ts").exists()

    assert cli("stop", "h").returncode == 0
    assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")
    assert cli("start", "h", "--testsrc", *SMALL, "--output", "hls").returncode == 0
    # A new start of the name begins anew: none of the old segments are left.
    assert all(int(f.stem.split("_")[1]) < 3 for f in hls.glob("segment_*.ts"))
    assert not playlist.exists() or "#EXT-X-ENDLIST" not in playlist.read_text()


def test_an_existing_output_file_is_refused_unless_overwrite(
    daemon: Daemon, tmp_path: Path
) -> None:
    out = tmp_path / "rec.mp4"
    content = os.urandom(50_000)
    out.write_bytes(content)
    proc = cli("start", "rec", "--testsrc", *SMALL, "--output", str(out))
    assert proc.returncode == 2
    assert str(out) in proc.stderr and "--overwrite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == content
    assert cli_json("saved")[1]["streams"] == {}

    proc = cli("start", "rec", "--testsrc", *SMALL, "--output", str(out), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: out.stat().st_size > 0 and out.read_bytes()[:50] != content[:50], 10, "new")
    assert "overwrite" not in cli_json("saved")[1]["streams"]["rec"]["config"]


def test_a_restarted_recording_keeps_every_earlier_file(tmp_home: Path, tmp_path: Path) -> None:
    rec = tmp_path / "rec.mp4"
    daemon = Daemon(tmp_home)
    try:
        assert cli("start", "rec", "--testsrc", *SMALL, "--output", str(rec)).returncode == 0
        wait_for(lambda: stream("rec")["frames"] > 20, 20, "frames in rec.mp4")
        pid = kill_ffmpeg("rec")
        wait_for(lambda: running_again("rec", pid), 20, "FFmpeg restarted")
        first = rec.read_bytes()
        assert stream("rec")["current_output"] == str(tmp_path / "rec.1.mp4")
        assert stream("rec")["output"] == str(rec)
        wait_for(lambda: stream("rec")["frames"] > 20, 20, "frames in rec.1.mp4")
        assert cli("restart", "rec").returncode == 0  # the user's restart: the next file
        second = (tmp_path / "rec.1.mp4").read_bytes()
        assert stream("rec")["current_output"] == str(tmp_path / "rec.2.mp4")
        wait_for(lambda: stream("rec")["frames"] > 20, 20, "frames in rec.2.mp4")
    finally:
        daemon.stop()
    third = (tmp_path / "rec.2.mp4").read_bytes()
    daemon = Daemon(tmp_home)  # restores the recording into the next file
    try:
        wait_for(lambda: stream("rec")["frames"] > 20, 30, "frames after the restore")
        assert stream("rec")["current_output"] == str(tmp_path / "rec.3.mp4")
        assert cli("stop", "rec").returncode == 0
    finally:
        daemon.stop()
    assert rec.read_bytes() == first and (tmp_path / "rec.1.mp4").read_bytes() == second
    assert (tmp_path / "rec.2.mp4").read_bytes() == third
    for name in ("rec.mp4", "rec.1.mp4", "rec.2.mp4", "rec.3.mp4"):
        assert playable(tmp_path / name), name


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_relay_outlives_the_end_of_its_source(
    daemon: Daemon, sample_video: Path, tmp_path: Path
) -> None:
    shutil.copy(sample_video, tmp_path / "clip.mp4")
    with http_server(tmp_path) as base:
        url = f"{base}/clip.mp4"
        proc = cli("start", "relay", "--url", url, "--codec", "copy", "--output", "null")
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: stream("relay")["restarts"] >= 2, 30, "restarts past the clip's end")
        wait_for(lambda: stream("relay")["status"] == "running", 10, "running again")
        assert "relay" in cli_json("saved")[1]["streams"]
        assert "source ended" in cli("logs", "relay", "-n", "200").stdout


def test_logs_stay_capped_under_a_stream_failing_in_a_loop(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMALCHEMY_LOG_MAX_BYTES", "1024")
    monkeypatch.setenv("STREAMALCHEMY_LOG_BACKUPS", "2")
    daemon = Daemon(tmp_home)
    receiver = RtspReceiver()
    try:
        proc = cli("start", "loop", "--testsrc", *SMALL, "--output", receiver.url)
        assert proc.returncode == 0, proc.stderr
        receiver.stop()  # every FFmpeg from now on fails: connection refused
        logs = tmp_home / "logs" / "streams"
        wait_for(lambda: (logs / "loop.log.2").exists(), 30, "two rotations", interval=0.2)
        assert stream("loop")["restarts"] >= 2
    finally:
        daemon.stop()
    files = list(logs.iterdir()) + list((tmp_home / "logs").glob("daemon.log*"))
    assert sorted(p.name for p in logs.iterdir()) == ["loop.log", "loop.log.1", "loop.log.2"]
    assert all(p.stat().st_size <= 1024 for p in files), [(p, p.stat().st_size) for p in files]


def test_lifecycle_lines_say_what_happened(
    tmp_home: Path, sample_video: Path, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    shutil.copy(sample_video, clip)
    daemon = Daemon(tmp_home)
    try:
        proc = cli("start", "cam", "--file", str(clip), "--codec", "copy", "--output", "null")
        assert proc.returncode == 0, proc.stderr
        assert cli("start", "gone", "--testsrc", *SMALL, "--output", "null").returncode == 0
        assert cli("stop", "gone").returncode == 0
    finally:
        daemon.stop()
    clip.unlink()
    daemon = Daemon(tmp_home)
    try:
        wait_for(lambda: "restore" in cli("logs", "cam").stdout, 20, "the restore skip")
        cam = cli("logs", "cam", "-n", "100").stdout
        gone = cli("logs", "gone", "-n", "100").stdout
    finally:
        daemon.stop()
    assert "daemon shutting down; the stream comes back at its next launch" in cam
    assert "restore skipped" in cam and str(clip) in cam
    assert "stopped by the user" in gone
    assert "code 255" not in cam + gone
