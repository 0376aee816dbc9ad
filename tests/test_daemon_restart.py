"""``daemon restart``, SIGHUP: the daemon replaced in place by the code installed now."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import FFMPEG, Daemon, cli, cli_json, free_port, wait_for
from streamalchemy import __version__
from streamalchemy.client.connection import Client
from streamalchemy.settings import load_settings

pytestmark = pytest.mark.e2e

PACKAGE = Path(__file__).resolve().parent.parent / "streamalchemy"
UPGRADED = f"{__version__}+upgrade"


@pytest.fixture
def installed(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the package that the daemon and the CLI run from, to be upgraded in place."""
    root = tmp_home / "site"
    shutil.copytree(PACKAGE, root / "streamalchemy", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.chdir(tmp_home)  # `python -m` puts the working directory first on the path
    return root / "streamalchemy"


def upgrade(package: Path, version: str = UPGRADED, extra: str = "") -> None:
    init = package / "__init__.py"
    text = init.read_text().replace(f'"{__version__}"', f'"{version}"')
    init.write_text(text + extra)


def status() -> dict[str, object]:
    code, doc = cli_json("daemon", "status")
    assert code == 0, doc
    return doc


class Hammer:
    """``list`` in a loop on the socket, from another thread, counting answers and failures."""

    def __init__(self) -> None:
        self.client = Client(load_settings())
        self.answers = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.request("GET", "/streams", autostart=False, timeout=60)
                self.answers += 1
            except Exception as exc:  # every kind of failure is what this counts
                self.failures.append(repr(exc))

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=70)


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_restart_after_an_upgrade_keeps_the_pid_and_no_request_fails(
    installed: Path, tmp_home: Path
) -> None:
    daemon = Daemon(tmp_home)
    try:
        before = status()
        assert before["version"] == __version__ and before["live_restore"] is True
        fds = fds_of(daemon.pid)
        upgrade(installed)
        with Hammer() as hammer:
            time.sleep(0.3)
            code, doc = cli_json("daemon", "restart")
            during = hammer.answers
            time.sleep(0.3)
        assert code == 0, doc
        assert doc["version"] == UPGRADED and doc["previous_version"] == __version__
        assert doc["pid"] == daemon.pid and "no stream stopped" in doc["message"]
        assert hammer.failures == [] and hammer.answers > during > 0
        after = status()
        assert after["pid"] == daemon.pid and after["version"] == UPGRADED
        assert after["install_path"] == str(installed)
        assert fds_of(daemon.pid) == fds  # nothing leaked across the exec
        assert daemon.proc.poll() is None
        log = (tmp_home / "logs" / "daemon.log").read_text()
        assert f"re-executed in place, was {__version__}" in log
    finally:
        assert daemon.stop() == 0  # SIGTERM still stops the new image cleanly


def test_a_broken_upgrade_is_refused_and_the_daemon_keeps_running(
    installed: Path, tmp_home: Path
) -> None:
    daemon = Daemon(tmp_home)
    try:
        upgrade(installed)
        with (installed / "daemon.py").open("a") as module:
            module.write("\ndef broken(:\n")
        proc = cli("daemon", "restart")
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert "does not start" in proc.stderr and "SyntaxError" in proc.stderr
        assert f"keeps running version {__version__}" in proc.stderr
        assert status()["version"] == __version__
        assert status()["pid"] == daemon.pid
    finally:
        daemon.stop()


def test_restart_without_a_daemon_starts_one(tmp_home: Path) -> None:
    code, doc = cli_json("daemon", "restart")
    assert code == 0, doc
    assert "was not running" in doc["message"] and doc["previous_version"] is None
    assert status()["pid"] == doc["pid"]


def test_sighup_restarts_in_place(installed: Path, tmp_home: Path) -> None:
    daemon = Daemon(tmp_home)
    try:
        started = status()["started_at"]
        upgrade(installed)
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for(lambda: status()["started_at"] != started, 30, "the restarted daemon")
        assert status()["version"] == UPGRADED and daemon.proc.poll() is None
    finally:
        daemon.stop()


def test_the_metrics_listener_is_handed_over(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("STREAMALCHEMY_METRICS_ADDR", f"127.0.0.1:{port}")
    daemon = Daemon(tmp_home)
    scrapes: list[bytes | str] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
                    scrapes.append(r.read())
            except OSError as exc:
                scrapes.append(repr(exc))

    scraper = threading.Thread(target=scrape, daemon=True)
    try:
        scraper.start()
        code, doc = cli_json("daemon", "restart")
        assert code == 0, doc
        time.sleep(0.3)
        done.set()
        scraper.join(timeout=70)
        assert scrapes and all(isinstance(s, bytes) and b"streamalchemy" in s for s in scrapes)
    finally:
        done.set()
        daemon.stop()


def test_with_live_restore_off_streams_are_restarted(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMALCHEMY_LIVE_RESTORE", "false")
    daemon = Daemon(tmp_home)
    try:
        proc = cli(
            "start", "pat", "--testsrc", "--resolution", "480", "--fps", "5", "--output", "null"
        )
        assert proc.returncode == 0, proc.stderr
        first = cli_json("list")[1]["streams"][0]["pid"]
        code, doc = cli_json("daemon", "restart")
        assert code == 0 and "live restore is off" in doc["message"], doc
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"

        def running_again() -> bool:
            streams = cli_json("list")[1]["streams"]
            return bool(streams) and streams[0]["status"] == "running"

        wait_for(running_again, 30, "the stream restored by the new daemon")
        assert cli_json("list")[1]["streams"][0]["pid"] != first
    finally:
        daemon.stop()


# -- streams that do not notice ---------------------------------------------------------


class UdpReceiver:
    """Timestamps every datagram that reaches a local UDP port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(65536)
            except TimeoutError:
                continue
            self.arrivals.append(time.monotonic())

    def largest_gap(self, since: float, until: float) -> float:
        times = [t for t in self.arrivals if since <= t <= until]
        assert len(times) > 10, "the receiver heard almost nothing"
        return max(b - a for a, b in itertools.pairwise(times))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def udp_receiver() -> Iterator[UdpReceiver]:
    receiver = UdpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def clip_25fps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten seconds of 25 fps H.264 at a bitrate that fills a datagram several times a frame."""
    path = tmp_path_factory.mktemp("media") / "clip25.ts"
    subprocess.run(
        [FFMPEG, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=640x360:rate=25", "-t", "10", "-c:v", "libx264", "-preset",
         "ultrafast", "-b:v", "2M", "-g", "25", "-pix_fmt", "yuv420p", str(path)],
        check=True,
        timeout=120,
    )  # fmt: skip
    return path


FRAME_GAP = 1 / 25


@pytest.mark.skipif(
    importlib.util.find_spec("streamalchemy.supervision.adoption") is None,
    reason="the new image adopts the streams through supervision.adoption",
)
def test_a_copy_stream_does_not_notice_a_restart_after_an_upgrade(
    installed: Path, tmp_home: Path, clip_25fps: Path, udp_receiver: UdpReceiver
) -> None:
    daemon = Daemon(tmp_home)
    try:
        out = f"udp://127.0.0.1:{udp_receiver.port}?pkt_size=1316"
        proc = cli("start", "cam", "--file", str(clip_25fps), "--codec", "copy", "--output", out)
        assert proc.returncode == 0, proc.stderr
        pid = cli_json("list")[1]["streams"][0]["pid"]
        time.sleep(3)
        calm = udp_receiver.largest_gap(time.monotonic() - 2.5, time.monotonic())
        upgrade(installed)
        with Hammer() as hammer:
            swap_from = time.monotonic()
            code, doc = cli_json("daemon", "restart")
            time.sleep(2)
            swap_to = time.monotonic()
        assert code == 0 and doc["version"] == UPGRADED, doc
        assert hammer.failures == []
        gap = udp_receiver.largest_gap(swap_from - 0.5, swap_to)
        assert gap <= 3 * max(calm, FRAME_GAP), (gap, calm)
        stream = cli_json("list")[1]["streams"][0]
        assert stream["pid"] == pid and stream["status"] == "running"
        assert status()["version"] == UPGRADED
        log = cli("logs", "cam", "-n", "200").stdout
        assert "adopted" in log, log[-2000:]
        shown = json.dumps(cli_json("show", "cam")[1])
        assert "adopt" in shown
    finally:
        daemon.stop()
