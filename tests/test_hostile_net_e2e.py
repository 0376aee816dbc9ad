"""The metrics address under attack: 8 hostile peers and 1,100 idle connections.

The real daemon with ``--metrics-addr``: while the attack runs, every request on the
control socket is answered and well formed, ``start`` works, the daemon holds no more
descriptors than its connection cap allows and logs no traceback. (How fast the
control socket answers meanwhile is measured by bench/hostile.py, not asserted here.)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_peers import Hostile

from conftest import Daemon, cli, end_daemon_of, free_port, wait_for
from streamalchemy.server.httpserver import PUBLIC
from streamalchemy.settings import load_settings

pytestmark = pytest.mark.e2e

IDLE = 1100


def _status_over_socket(path: Path) -> tuple[int, dict[str, object]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def attacked(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Daemon, Hostile]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 200:
        if hard < IDLE + 200:
            pytest.skip(f"this test holds {IDLE} connections; the open-files limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    home = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))
    monkeypatch.setenv("STREAMALCHEMY_HOME", str(home))
    monkeypatch.setenv("STREAMALCHEMY_MEDIAMTX", "off")
    for var in ("STREAMALCHEMY_SOCKET", "STREAM_PERSISTENCE_FILE", "STREAMALCHEMY_METRICS_ADDR"):
        monkeypatch.delenv(var, raising=False)
    port = free_port()
    daemon = Daemon(home, "--metrics-addr", f"127.0.0.1:{port}")
    hostile = Hostile("127.0.0.1", port, idle=IDLE)
    try:
        yield daemon, hostile
    finally:
        hostile.close()
        daemon.stop()
        end_daemon_of(home)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        shutil.rmtree(home, ignore_errors=True)


def test_the_control_socket_answers_and_start_works_under_attack(
    attacked: tuple[Daemon, Hostile],
) -> None:
    daemon, hostile = attacked
    baseline = _fds(daemon.pid)
    wait_for(
        lambda: all(hostile.rounds.values()) and len(hostile.idle) >= IDLE,
        30,
        "every attack to go round once and the idle connections to be open",
        interval=0.2,
    )
    answered = []
    most_fds = baseline
    for _ in range(30):
        status, body = _status_over_socket(daemon.socket)
        answered.append(status == 200 and body.get("success") is True)
        most_fds = max(most_fds, _fds(daemon.pid))
    started = cli(
        "start", "net1", "--testsrc", "--resolution", "480", "--fps", "5", "--output", "null"
    )
    assert started.returncode == 0, started.stderr
    listed = json.loads(cli("list", "--json").stdout)
    assert [s["name"] for s in listed["streams"]] == ["net1"]
    assert all(answered), answered
    # Idle peers past the cap were answered 503 and closed (and came back).
    wait_for(lambda: hostile.reconnects > IDLE, 30, "idle peers to be refused", interval=0.2)
    # Descriptors: the cap holds, whatever the number of peers. Beyond the connections
    # served, asyncio holds those it accepted at one go (a batch each turn of the loop)
    # until each is refused; slack for the stream, its pipes and the CLI.
    in_flight = 8 * PUBLIC.accept_batch
    assert most_fds <= baseline + PUBLIC.max_connections + in_flight + 32, (baseline, most_fds)
    assert daemon.proc.poll() is None
    assert cli("stop", "net1").returncode == 0
    log = (load_settings().log_dir / "daemon.log").read_text()
    assert "Traceback" not in log
