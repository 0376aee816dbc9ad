"""The daemon's lifecycle: one per home, its socket, signals, SIGKILL, autostart."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import Daemon, cli, cli_json, end_daemon_of, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]


def ffmpeg_pids_for(home: Path) -> set[int]:
    """Every FFmpeg on the machine whose command line points into ``home``."""
    pids = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and "ffmpeg" in os.path.basename(cmd[0]) and str(home) in " ".join(cmd):
            pids.add(proc.pid)
    return pids


def start_hls(name: str) -> None:
    proc = cli("start", name, "--testsrc", "--resolution", "480", "--fps", "5", "--output", "hls")
    assert proc.returncode == 0, proc.stderr


def test_status_json_shape(daemon: Daemon, tmp_home: Path) -> None:
    code, doc = cli_json("daemon", "status")
    assert code == 0
    assert doc["success"] is True and doc["pid"] == daemon.pid
    assert doc["socket"] == str(tmp_home / "streamalchemy.sock")
    assert doc["state_file"] == str(tmp_home / "active_streams.json")
    assert doc["persistence_enabled"] is True and doc["streams"] == 0
    assert isinstance(doc["version"], str) and doc["uptime_seconds"] >= 0


def test_second_daemon_exits_1_naming_the_first(daemon: Daemon) -> None:
    proc = cli("daemon", "run", timeout=30)
    assert proc.returncode == 1
    assert str(daemon.pid) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert cli_json("daemon", "status")[1]["pid"] == daemon.pid  # the socket was not stolen


def test_stale_socket_is_replaced(tmp_home: Path) -> None:
    path = tmp_home / "streamalchemy.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a crashed daemon leaves
    d = Daemon(tmp_home)
    try:
        assert cli_json("daemon", "status")[1]["pid"] == d.pid
    finally:
        d.stop()


def test_socket_and_directory_modes(daemon: Daemon, tmp_home: Path) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_home).st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_socket_refuses_another_user(daemon: Daemon, tmp_home: Path) -> None:
    # Loosen the modes so that only the daemon's own uid check stands in the way.
    os.chmod(tmp_home, 0o755)
    os.chmod(daemon.socket, 0o666)
    probe = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        "s.sendall(b'GET /status HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n');"
        "print(s.recv(4096).decode().split()[1])"
    )
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            probe,
            str(daemon.socket),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.strip() == "403", proc.stderr


def test_sigterm_stops_children_keeps_state(tmp_home: Path) -> None:
    d = Daemon(tmp_home)
    start_hls("a")
    start_hls("b")
    children = d.ffmpeg_children()
    assert len(children) == 2
    assert d.stop() == 0
    psutil.wait_procs(children, timeout=10)
    assert not any(c.is_running() for c in children)
    assert set(json.loads((tmp_home / "active_streams.json").read_text())) == {"a", "b"}
    assert not (tmp_home / "streamalchemy.sock").exists()


def test_daemon_stop_command_then_run_restores(tmp_home: Path) -> None:
    d = Daemon(tmp_home)
    start_hls("a")
    old_pid = cli_json("list")[1]["streams"][0]["pid"]
    code, doc = cli_json("daemon", "stop")
    assert code == 0 and doc["success"] is True
    assert d.proc.wait(20) == 0
    assert cli_json("daemon", "stop") == (
        0,
        {"success": True, "message": "the daemon is not running"},
    )

    d = Daemon(tmp_home)
    try:
        wait_for(
            lambda: [s["status"] for s in cli_json("list")[1]["streams"]] == ["running"],
            20,
            "the stream to be restored",
        )
        assert cli_json("list")[1]["streams"][0]["pid"] != old_pid
    finally:
        d.stop()


def test_kill_9_leaves_no_ffmpeg_and_relaunch_runs_each_once(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMALCHEMY_LIVE_RESTORE", "0")  # with it on, FFmpeg lives on
    d = Daemon(tmp_home)
    for name in ("k1", "k2", "k3"):
        start_hls(name)
    before = ffmpeg_pids_for(tmp_home)
    assert len(before) == 3
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_for(lambda: not ffmpeg_pids_for(tmp_home), 10, "FFmpeg to die with the daemon")

    d = Daemon(tmp_home)
    try:
        wait_for(lambda: len(ffmpeg_pids_for(tmp_home)) == 3, 20, "three restored FFmpeg")
        time.sleep(1.5)  # a duplicate restore would show up by now
        after = ffmpeg_pids_for(tmp_home)
        assert len(after) == 3 and not after & before
        names = sorted(s["name"] for s in cli_json("list")[1]["streams"])
        assert names == ["k1", "k2", "k3"]
    finally:
        d.stop()


def test_no_daemon_and_autostart_off_exits_3(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMALCHEMY_AUTOSTART", "0")
    proc = cli("list")
    assert proc.returncode == 3
    assert len(proc.stderr.strip().splitlines()) == 1
    code, doc = cli_json("start", "x", "--testsrc")
    assert code == 3 and doc["success"] is False
    assert cli("daemon", "status").returncode == 3


def test_an_autostart_that_fails_prints_the_daemons_reason(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("STREAMALCHEMY_METRICS_ADDR", f"127.0.0.1:{port}")
        proc = cli("list", timeout=30)
    assert proc.returncode == 3
    (line,) = proc.stderr.splitlines()
    assert line.startswith("streamalchemy: the daemon could not start: ")
    assert f"cannot serve metrics on 127.0.0.1:{port}: address already in use" in line
    assert "did not start within" not in line


def test_the_daemon_down_message_suggests_a_command_that_starts_it(tmp_home: Path) -> None:
    proc = cli("daemon", "status")
    assert proc.returncode == 3
    assert "`streamalchemy list`" in proc.stderr and "daemon run" not in proc.stderr


def test_autostart_is_detached(tmp_home: Path) -> None:
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "streamalchemy", "list", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - started < 25  # run() returned: no pipe held open
        assert json.loads(proc.stdout) == {"success": True, "streams": [], "not_running": {}}
        pid = int((tmp_home / "daemon.pid").read_text())
        assert psutil.Process(pid).is_running()
    finally:
        end_daemon_of(tmp_home)


def test_invalid_setting_is_one_line_error(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_PERSISTENCE_BACKUP_COUNT", "abc")
    proc = cli("saved")
    assert proc.returncode == 2
    assert "STREAM_PERSISTENCE_BACKUP_COUNT" in proc.stderr
    monkeypatch.delenv("STREAM_PERSISTENCE_BACKUP_COUNT")
    (tmp_home / "config.toml").write_text("backup_count = [")
    proc = cli("saved")
    assert proc.returncode == 2 and "config.toml" in proc.stderr
