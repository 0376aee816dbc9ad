"""Shared fixtures: real FFmpeg, real files, a private STREAMALCHEMY_HOME per test."""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import settings

import streamalchemy

# CI replays the same examples on every run (a red CI blocks a landing); a developer's
# runs draw new ones, and what they find becomes an @example.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the package once. The tests run the CLI and the daemon as subprocesses
    some thousand times; under PYTHONDONTWRITEBYTECODE (set on the CI machines) nothing
    else writes the bytecode, and each of them would compile what it imports anew (up to
    half a second a daemon start)."""
    compileall.compile_dir(Path(streamalchemy.__file__).parent, quiet=1)


FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"


def wait_for(predicate: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is truthy or fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """End a process the test started (and its group, when it leads one), by PID."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def tmp_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private home: Unix socket paths are capped near 107 bytes."""
    home = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))
    monkeypatch.setenv("STREAMALCHEMY_HOME", str(home))
    for var in (
        "STREAMALCHEMY_SOCKET",
        "STREAM_PERSISTENCE_FILE",
        "ENABLE_STREAM_PERSISTENCE",
        "STREAM_PERSISTENCE_BACKUP_COUNT",
        "STREAMALCHEMY_RTSP_URL",
        "STREAMALCHEMY_AUTOSTART",
    ):
        monkeypatch.delenv(var, raising=False)
    # A MediaMTX installed on the developer's machine stays out of the tests' way.
    monkeypatch.setenv("STREAMALCHEMY_MEDIAMTX", "off")
    yield home
    end_daemon_of(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-second 320x240 H.264 + AAC clip made by FFmpeg for this test run."""
    path = tmp_path_factory.mktemp("media") / "sample.mp4"
    subprocess.run(
        [
            FFMPEG,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=15:duration=3",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=3",
            "-c:v",
            "libx264",
            "-g",
            "15",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


class RtspReceiver:
    """FFmpeg in RTSP listen mode: a real RTSP server that counts the frames it receives."""

    def __init__(self, port: int | None = None, path: str = "x") -> None:
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/{path}"
        self.frames = 0
        self.proc = subprocess.Popen(
            [
                FFMPEG,
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-rtsp_flags",
                "listen",
                "-timeout",
                "30",
                "-i",
                self.url,
                "-progress",
                "pipe:1",
                "-stats_period",
                "0.2",
                "-f",
                "null",
                "-",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_listening()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("frame="):
                self.frames = max(self.frames, int(line.split("=", 1)[1] or 0))

    def _wait_listening(self) -> None:
        # A probing connect would be taken as the one client FFmpeg's listen mode accepts.
        # A client already accepted counts too: a stream retrying against this port can
        # connect in the instant between two polls, and listen mode then stops listening.
        def listening() -> bool:
            return any(
                c.status in (psutil.CONN_LISTEN, psutil.CONN_ESTABLISHED)
                and c.laddr.port == self.port
                for c in psutil.Process(self.proc.pid).net_connections("tcp")
            )

        wait_for(listening, 10, f"RTSP receiver on port {self.port}")

    def stop(self) -> None:
        kill_tree(self.proc)


@pytest.fixture
def rtsp_receiver() -> Iterator[RtspReceiver]:
    receiver = RtspReceiver()
    yield receiver
    receiver.stop()


# -- the real CLI and daemon ------------------------------------------------------------


def cli(
    *args: str, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``streamalchemy ARGS`` as a user would, in this test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "streamalchemy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def cli_json(*args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    proc = cli(*args, "--json", timeout=timeout)
    assert proc.stdout.strip(), f"no JSON on stdout; stderr: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def end_daemon_of(home: Path) -> None:
    """Kill whatever daemon (and FFmpeg) a test left running in ``home``: the daemon by its
    recorded pid, and every process of that home (FFmpeg that outlived a killed daemon
    inherited its ``STREAMALCHEMY_HOME``)."""
    found: list[psutil.Process] = []
    try:
        pid = int((home / "daemon.pid").read_text().strip())
        proc = psutil.Process(pid)
        if "streamalchemy" in " ".join(proc.cmdline()):
            found = [proc, *proc.children(recursive=True)]
    except (OSError, ValueError, psutil.Error):
        pass
    found += home_processes(home)
    for p in found:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(found, timeout=10)


def home_processes(home: Path) -> list[psutil.Process]:
    """The processes of ``home``: those whose environment names it (daemons, the CLI), and
    the children recorded in its lock files (FFmpeg, which may outlive a killed daemon)."""
    mine = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get("STREAMALCHEMY_HOME") == str(home):
                mine.append(proc)
    for lock in [*home.glob("run/streams/*.lock"), *home.glob("run/*.lock")]:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, psutil.Error):
            proc = psutil.Process(int(json.loads(lock.read_text())["pid"]))
            if proc.status() != psutil.STATUS_ZOMBIE and proc not in mine:
                mine.append(proc)
    return mine


class Daemon:
    """``streamalchemy daemon run`` in the foreground, as systemd would run it."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.socket = home / "streamalchemy.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamalchemy", "daemon", "run", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(
            lambda: self.answering() or self.proc.poll() is not None, 20, "the daemon's socket"
        )
        assert self.proc.poll() is None, (
            self.proc.stderr.read().decode() if self.proc.stderr else ""
        )

    def answering(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(str(self.socket)) == 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ffmpeg_children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; kill by pid if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait(5)

    def kill(self) -> None:
        children = self.ffmpeg_children()
        self.proc.kill()
        self.proc.wait(10)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


@pytest.fixture
def daemon(tmp_home: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_home)
    yield d
    d.stop()


# -- shared by the metrics, dashboard and top tests ---------------------------------

PER_STREAM = (
    "streamalchemy_stream_up",
    "streamalchemy_stream_info",
    "streamalchemy_stream_frames_total",
    "streamalchemy_stream_fps",
    "streamalchemy_stream_output_bytes_total",
    "streamalchemy_stream_speed",
    "streamalchemy_stream_restarts_total",
    "streamalchemy_stream_remaining_seconds",
    "streamalchemy_stream_cpu_seconds_total",
    "streamalchemy_stream_memory_bytes",
)
DAEMON = (
    "streamalchemy_build_info",
    "streamalchemy_daemon_start_time_seconds",
    "streamalchemy_restore_results_total",
    "streamalchemy_state_writes_total",
    "streamalchemy_state_write_errors_total",
)


def promtool_findings(exposition: bytes) -> list[str]:
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    findings = (checked.stdout + checked.stderr).decode().strip().splitlines()
    assert checked.returncode in (0, 3), findings  # 3: lint findings only, it parsed
    return findings if checked.returncode else []


DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "streamalchemy.json"


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard, with Grafana's variables filled in."""
    doc = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    return [e.replace("$__rate_interval", "1m").replace("$name", ".*") for e in found]


def own_terminal() -> None:
    """In the child: a session whose controlling terminal is the pty, as in a real shell."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
