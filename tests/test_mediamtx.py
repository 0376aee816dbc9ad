"""MediaMTX supervision, with stand-in executables: one that listens, one that dies at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import Daemon, cli_json, free_port, wait_for
from streamalchemy.settings import load_settings
from streamalchemy.supervision import adoption, mediamtx

# Its e2e tests may share the machine (scripts/test.sh runs them two at a time).
pytestmark = pytest.mark.parallel

# Each stand-in appends "<pid> <cwd>" to $STANDIN_MARKER when it starts.
LISTENER = """\
import os, socket, sys
port = int(os.environ["MTX_RTSPADDRESS"].rsplit(":", 1)[1])
with open(os.environ["STANDIN_MARKER"], "a") as f:
    f.write(f"{os.getpid()} {os.getcwd()}\\n")
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
print(f"listener opened on :{port}", flush=True)
while True:
    server.accept()[0].close()
"""
CRASHER = """\
import os
with open(os.environ["STANDIN_MARKER"], "a") as f:
    f.write(f"{os.getpid()} {os.getcwd()}\\n")
print("no configuration, giving up", flush=True)
raise SystemExit(1)
"""


def stand_in(directory: Path, body: str) -> Path:
    path = directory / "mediamtx"
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def started_pids(marker: Path) -> list[int]:
    if not marker.exists():
        return []
    return [int(line.split()[0]) for line in marker.read_text().splitlines()]


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where stand-ins record their pids; whatever is still alive is killed by pid at the end."""
    path = tmp_path / "started.txt"
    monkeypatch.setenv("STANDIN_MARKER", str(path))
    yield path
    for pid in started_pids(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_local_address_only_for_plain_rtsp_on_this_machine() -> None:
    assert mediamtx.local_address("rtsp://127.0.0.1:8554") == ("127.0.0.1", 8554)
    assert mediamtx.local_address("rtsp://localhost") == ("localhost", 554)
    assert mediamtx.local_address("rtsp://[::1]:9000") == ("::1", 9000)
    assert mediamtx.local_address("rtsp://cams.example.org:8554") is None
    assert mediamtx.local_address("rtsp://192.0.2.7:8554") is None
    assert mediamtx.local_address("rtsps://127.0.0.1:8322") is None


@pytest.mark.e2e
def test_started_listening_in_its_directory_and_stopped(tmp_path: Path, marker: Path) -> None:
    binary = stand_in(tmp_path, LISTENER)
    port = free_port()

    async def scenario() -> None:
        server = mediamtx.MediaMTX(
            str(binary), "127.0.0.1", port, tmp_path / "logs", run_dir=tmp_path / "run"
        )
        await server.start()
        assert mediamtx.listening("127.0.0.1", port)
        await server.stop()
        assert not mediamtx.listening("127.0.0.1", port)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    [(pid, cwd)] = [line.split() for line in marker.read_text().splitlines()]
    assert cwd == str(tmp_path)  # where a release's mediamtx.yml sits
    assert not psutil.pid_exists(int(pid))
    text = (tmp_path / "logs" / "mediamtx.log").read_text()
    assert f"listener opened on :{port}" in text and "stopped" in text


@pytest.mark.e2e
def test_a_mediamtx_left_by_a_dead_daemon_is_adopted(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(adoption.MARK_VAR, "dead-daemon")
    binary = stand_in(tmp_path, LISTENER)
    port, run_dir = free_port(), tmp_path / "run"

    async def dies() -> None:  # a daemon that dies without stopping MediaMTX
        server = mediamtx.MediaMTX(
            str(binary), "127.0.0.1", port, tmp_path / "logs", run_dir=run_dir
        )
        await server.start()

    async def adopts() -> None:
        left = adoption.find({}, run_dir)["mediamtx"]
        assert left.alive and left.process.pid == started_pids(marker)[0]
        server = mediamtx.MediaMTX(
            str(binary), "127.0.0.1", port, tmp_path / "logs", run_dir=run_dir, adopt=left
        )
        await server.start()
        assert mediamtx.listening("127.0.0.1", port)
        await server.stop()

    asyncio.run(asyncio.wait_for(dies(), 30))
    assert mediamtx.listening("127.0.0.1", port)
    asyncio.run(asyncio.wait_for(adopts(), 30))
    [pid] = started_pids(marker)  # adopted, never started twice
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert "adopted MediaMTX pid" in (tmp_path / "logs" / "mediamtx.log").read_text()


@pytest.mark.e2e
def test_restarted_with_growing_backoff(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mediamtx, "READY_WAIT", 0.5)
    binary = stand_in(tmp_path, CRASHER)
    log_file = tmp_path / "logs" / "mediamtx.log"

    def delays() -> list[float]:
        text = log_file.read_text() if log_file.exists() else ""
        return [float(d) for d in re.findall(r"restarting in ([0-9.]+)s", text)]

    async def scenario() -> None:
        server = mediamtx.MediaMTX(
            str(binary), "127.0.0.1", free_port(), tmp_path / "logs", run_dir=tmp_path / "run"
        )
        await server.start()  # gives up waiting for the port, keeps supervising
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while len(started_pids(marker)) < 4 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await server.stop()  # also during a backoff wait: returns at once

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(started_pids(marker)) >= 4
    first = delays()[:3]
    # Backoff(base=1): the n-th delay is 2**n seconds, less up to half of it in jitter.
    for n, delay in enumerate(first):
        assert 2**n * 0.5 - 0.05 <= delay <= 2**n + 0.05, first
    assert "no configuration, giving up" in log_file.read_text()


@pytest.mark.e2e
def test_not_started_when_off_absent_remote_or_port_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = str(stand_in(tmp_path, LISTENER))
    env = {"STREAMALCHEMY_HOME": str(tmp_path)}
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with busy:
        monkeypatch.setenv("PATH", str(tmp_path))  # a mediamtx to find there...
        cases = [
            {"STREAMALCHEMY_MEDIAMTX": "off"},  # ...turned off
            {"STREAMALCHEMY_MEDIAMTX": binary, "STREAMALCHEMY_RTSP_URL": "rtsp://192.0.2.7:8554"},
            {
                "STREAMALCHEMY_MEDIAMTX": binary,
                "STREAMALCHEMY_RTSP_URL": f"rtsp://127.0.0.1:{port}",
            },
        ]
        for extra in cases:
            assert (
                asyncio.run(mediamtx.start_if_needed(load_settings(env={**env, **extra}))) is None
            )
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # none configured or on PATH
        assert asyncio.run(mediamtx.start_if_needed(load_settings(env=env))) is None


@pytest.mark.e2e
def test_daemon_runs_mediamtx_until_it_stops(
    tmp_home: Path, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("STREAMALCHEMY_MEDIAMTX", str(stand_in(tmp_path, LISTENER)))
    monkeypatch.setenv("STREAMALCHEMY_RTSP_URL", f"rtsp://127.0.0.1:{port}")
    d = Daemon(tmp_home)
    try:
        # Up before the daemon answered: restored RTSP streams find their server.
        assert mediamtx.listening("127.0.0.1", port)
        [pid] = started_pids(marker)
        assert pid in {c.pid for c in d.ffmpeg_children()}
        assert cli_json("daemon", "status")[0] == 0
    finally:
        assert d.stop() == 0
    wait_for(lambda: not psutil.pid_exists(pid), 10, "MediaMTX to stop with the daemon")
    assert "listener opened" in (tmp_home / "logs" / "mediamtx.log").read_text()
