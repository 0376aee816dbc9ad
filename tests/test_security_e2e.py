"""Secrets never shown nor readable by another user; text printed literally; HTTP limits.

Real daemon, real FFmpeg, and a real RTSP source that demands a password (Basic or
Digest, ``rtsp_auth_source``). Another user is ``nobody`` (needs root).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from rtsp_auth_source import RtspAuthSource

from conftest import Daemon, RtspReceiver, cli, cli_json, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]

USER, PASSWORD, TOKEN = "camuser", "S3cretPass", "T0kenSecret"
OUT_USER, OUT_PASSWORD, OUT_TOKEN = "pubuser", "PubPass", "0utT0ken"
INPUT_SECRETS = (PASSWORD, TOKEN)
SECRETS = (*INPUT_SECRETS, OUT_PASSWORD, OUT_TOKEN)
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
root_only = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="acts as nobody: needs root"
)


@pytest.fixture(params=["basic", "digest"])
def source(request: pytest.FixtureRequest, sample_video: Path) -> Iterator[RtspAuthSource]:
    src = RtspAuthSource(sample_video, user=USER, password=PASSWORD, scheme=request.param)
    yield src
    src.stop()


def _with_secret(url: str, user: str, password: str) -> str:
    return url.replace("rtsp://", f"rtsp://{user}:{password}@", 1)


def _status(name: str) -> str | None:
    code, doc = cli_json("list")
    assert code == 0, doc
    return next((s["status"] for s in doc["streams"] if s["name"] == name), None)


def _cmdlines(daemon: Daemon) -> list[str]:
    procs = [psutil.Process(daemon.pid), *daemon.ffmpeg_children()]
    lines = []
    for proc in procs:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace"))
    return lines


def _files_holding(home: Path, secrets: tuple[str, ...], skip: tuple[str, ...]) -> list[str]:
    found = []
    for path in home.rglob("*"):
        if path.is_file() and not path.name.startswith(skip):
            text = path.read_bytes().decode(errors="replace")
            found += [f"{path}: {s}" for s in secrets if s in text]
    return found


def _http(sock: Path, method: str, path: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: l\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _frames(name: str) -> int:
    doc = cli_json("list")[1]
    return next((s["frames"] or 0 for s in doc["streams"] if s["name"] == name), 0)


def test_rtsp_source_with_password_runs_and_no_secret_leaks(
    tmp_home: Path, source: RtspAuthSource
) -> None:
    daemon = Daemon(tmp_home)
    try:
        url = _with_secret(source.url, USER, PASSWORD) + f"?token={TOKEN}"
        # UDP ignores credentials; they are here to be masked (and it needs no receiver).
        port = free_port()
        output = f"udp://{OUT_USER}:{OUT_PASSWORD}@127.0.0.1:{port}?token={OUT_TOKEN}"
        started = cli("start", "cam", "--url", url, "--codec", "copy", "--output", output)
        assert started.returncode == 0, started.stderr
        wait_for(lambda: _status("cam") == "running", 20, "the stream running")
        wait_for(lambda: _frames("cam") > 5, 20, "frames through the authenticated source")
        assert source.authorized > 0 and source.refused > 0  # it asked, FFmpeg answered

        # FFmpeg's command line holds no input secret: the URL came through a socket.
        for line in _cmdlines(daemon):
            assert not [s for s in INPUT_SECRETS if s in line], line
        # An output has no other way in FFmpeg 5.1 (README "Security"): its secrets
        # are the ones left in argv, which hidepid=invisible hides from others.

        outputs = [started.stdout, started.stderr]
        for args in (["list"], ["saved"], ["show", "cam"], ["logs", "cam"], ["daemon", "status"]):
            for as_json in ([], ["--json"]):
                done = cli(*args, *as_json)
                if "no such endpoint" in done.stderr:
                    continue  # a route another branch adds (show)
                assert done.returncode == 0, (args, done.stderr)
                outputs += [done.stdout, done.stderr]
        outputs.append(_http(daemon.socket, "GET", "/persistent_streams"))
        outputs.append(_http(daemon.socket, "GET", "/streams"))
        for text in outputs:
            assert not [s for s in (*SECRETS, USER, OUT_USER) if s in text], text
        saved = json.loads(cli("saved", "--json").stdout)
        assert saved["streams"]["cam"]["config"]["source_url"].startswith("rtsp://***:***@")

        # No file but the 0600 state file (and its backups) holds them.
        skip = ("active_streams.json",)
        assert _files_holding(tmp_home, SECRETS, skip) == []
        state = tmp_home / "active_streams.json"
        assert PASSWORD in state.read_text() and oct(state.stat().st_mode & 0o777) == "0o600"
        children = json.loads((tmp_home / "children.json").read_text())
        assert "udp://***:***@" in json.dumps(children)  # masked, still recognisable

        if os.geteuid() == 0 and shutil.which("setpriv"):
            ps = subprocess.run(
                [*AS_NOBODY, "ps", "-eo", "args"], capture_output=True, text=True, timeout=30
            )
            assert ps.returncode == 0
            assert not [s for s in INPUT_SECRETS if s in ps.stdout]
            denied = subprocess.run(
                [*AS_NOBODY, "cat", str(state)], capture_output=True, text=True, timeout=30
            )
            assert denied.returncode != 0 and PASSWORD not in denied.stdout

        # A restart of FFmpeg (it dies) gets the source again through the socket.
        pids = [p.pid for p in daemon.ffmpeg_children() if p.name() == "ffmpeg"]
        assert pids
        os.kill(pids[0], 9)
        wait_for(
            lambda: (
                _status("cam") == "running"
                and any(p.pid not in pids for p in daemon.ffmpeg_children())
            ),
            30,
            "the stream back after FFmpeg died",
        )
        for line in _cmdlines(daemon):
            assert not [s for s in INPUT_SECRETS if s in line], line
    finally:
        daemon.stop()
    assert _files_holding(tmp_home, SECRETS, ("active_streams.json",)) == []


def test_credential_references_resolve_at_launch_and_stay_references(
    tmp_home: Path, sample_video: Path, rtsp_receiver: RtspReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = RtspAuthSource(sample_video, user=USER, password=PASSWORD, scheme="digest")
    credentials = tmp_home / "credentials"
    credentials.mkdir(mode=0o700)
    secret_file = credentials / "CAM_PASS"
    secret_file.write_text(PASSWORD + "\n")
    secret_file.chmod(0o600)
    monkeypatch.setenv("CAM_USER", USER)  # from the daemon's environment
    daemon = Daemon(tmp_home)
    try:
        url = source.url.replace("rtsp://", "rtsp://${CAM_USER}:${CAM_PASS}@")
        started = cli(
            "start", "ref", "--url", url, "--codec", "copy", "--output", rtsp_receiver.url
        )
        assert started.returncode == 0, started.stderr
        wait_for(lambda: rtsp_receiver.frames > 5, 20, "frames with resolved credentials")
        state = (tmp_home / "active_streams.json").read_text()
        assert "${CAM_USER}:${CAM_PASS}@" in state and PASSWORD not in state
        shown = cli_json("list")[1]["streams"][0]["source"]
        assert "${CAM_USER}:${CAM_PASS}@" in shown  # a reference is no secret
        skip = ("CAM_PASS",)
        assert _files_holding(tmp_home, (PASSWORD,), skip) == []
        for line in _cmdlines(daemon):
            assert PASSWORD not in line

        wrong = source.url.replace("rtsp://", "rtsp://${CAM_USER}:WrongPass@")
        refused = cli("start", "wrong", "--url", wrong, "--codec", "copy", "--output", "null")
        assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
        assert "WrongPass" not in refused.stderr and len(refused.stderr.splitlines()) == 1

        missing = cli("start", "nope", "--url", "rtsp://${NOPE_PASS}@127.0.0.1:1/x")
        assert missing.returncode == 2
        assert "${NOPE_PASS}" in missing.stderr and len(missing.stderr.splitlines()) == 1

        secret_file.chmod(0o644)
        loose = cli("start", "loose", "--url", url, "--codec", "copy", "--output", "null")
        assert loose.returncode == 2 and f"chmod 600 {secret_file}" in loose.stderr
    finally:
        daemon.stop()
        source.stop()

    # At the next launch the reference cannot be resolved: skipped, kept, reason named.
    secret_file.unlink()
    daemon = Daemon(tmp_home)
    try:
        wait_for(lambda: "ref" in cli_json("list")[1].get("not_running", {}), 20, "the restore")
        reason = cli_json("list")[1]["not_running"]["ref"]
        assert "${CAM_PASS}" in reason
        assert "ref" in json.loads((tmp_home / "active_streams.json").read_text())
        code, doc = cli_json("restore")
        assert code == 0 and doc["results"]["ref"]["result"] == "skipped"
        assert "${CAM_PASS}" in doc["results"]["ref"]["reason"]
    finally:
        daemon.stop()


def test_markup_and_control_characters_print_literally(tmp_home: Path, sample_video: Path) -> None:
    odd = tmp_home / "[live] cam.mp4"
    shutil.copy(sample_video, odd)
    state = tmp_home / "active_streams.json"
    entry = {"config": {"stream_type": "testsrc", "video_codec": "h264"}, "saved_at": time.time()}
    state.write_text(json.dumps({"evil\x1b[2J": entry}))
    state.chmod(0o600)
    odd_url = f"udp://127.0.0.1:{free_port()}/[/]x"  # markup-like, on a port nobody uses
    daemon = Daemon(tmp_home)
    try:
        for args in (["br3", "--url", odd_url], ["live", "--file", str(odd)]):
            done = cli("start", *args, "--output", "null")
            assert done.returncode == 0, done.stderr
        for args in (["list"], ["saved"], ["restore"], ["show", "live"]):
            done = cli(*args)
            if "no such endpoint" in done.stderr:
                continue  # a route another branch adds (show)
            # restore: the invalid saved name fails (exit 1), reported, not crashed on
            assert done.returncode in ((0, 1) if args == ["restore"] else (0,)), done.stderr
            assert "Traceback" not in done.stderr and "\x1b" not in done.stdout
            if args != ["show", "live"]:
                assert "evil\\x1b[2J" in done.stdout, (args, done.stdout)
        listing = cli("list", "--wide").stdout  # every column, whatever COLUMNS says
        assert odd_url in listing
        assert "[live] cam.mp4" in listing
        assert "evil\x1b[2J" in json.loads(state.read_text())  # kept
    finally:
        daemon.stop()


def test_header_flood_is_431_and_memory_returns(tmp_home: Path) -> None:
    daemon = Daemon(tmp_home)
    try:
        proc = psutil.Process(daemon.pid)
        _http(daemon.socket, "GET", "/status")
        before = proc.memory_info().rss
        line = b"X-Flood-%d: " + b"v" * 1000 + b"\r\n"
        for _ in range(3):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(daemon.socket))
                s.sendall(b"GET /status HTTP/1.1\r\n")
                sent = 0
                try:
                    while sent < 200 << 20:  # 200 MB of headers without end
                        s.sendall(b"".join(line % i for i in range(1000)))
                        sent += 1000 * len(line)
                except OSError:
                    pass  # answered and closed
                reply = b""
                try:
                    while chunk := s.recv(65536):
                        reply += chunk
                except OSError:
                    pass
                assert reply.startswith(b"HTTP/1.1 431"), reply[:80]
                assert sent < 100 << 20  # it stopped reading long before
        time.sleep(0.5)
        after = proc.memory_info().rss
        assert after <= before * 1.10, (before, after)
        assert '"success": true' in _http(daemon.socket, "GET", "/status")
    finally:
        daemon.stop()


@root_only
def test_nobody_cannot_read_state_logs_or_record(tmp_home: Path) -> None:
    daemon = Daemon(tmp_home)
    try:
        assert (
            cli("start", "t", "--testsrc", "--output", "null", "--resolution", "480").returncode
            == 0
        )
        for path in (tmp_home / "active_streams.json", tmp_home / "logs" / "daemon.log"):
            done = subprocess.run([*AS_NOBODY, "cat", str(path)], capture_output=True, timeout=30)
            assert done.returncode != 0
        for path in tmp_home.rglob("*"):
            mode = path.lstat().st_mode & 0o077
            assert mode == 0, f"{path} is open to others: {oct(path.lstat().st_mode)}"
    finally:
        daemon.stop()
