"""Shared fixtures: real FFmpeg, real files, a private STREAMALCHEMY_HOME per test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

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
        try:
            os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()
        except ProcessLookupError:
            pass
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
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-second 320x240 H.264 + AAC clip made by FFmpeg for this test run."""
    path = tmp_path_factory.mktemp("media") / "sample.mp4"
    subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error",
         "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15:duration=3",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
         "-c:v", "libx264", "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
         str(path)],
        check=True, timeout=60,
    )
    return path


class RtspReceiver:
    """FFmpeg in RTSP listen mode: a real RTSP server that counts the frames it receives."""

    def __init__(self, port: int | None = None, path: str = "x") -> None:
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/{path}"
        self.frames = 0
        self.proc = subprocess.Popen(
            [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error",
             "-rtsp_flags", "listen", "-timeout", "30", "-i", self.url,
             "-progress", "pipe:1", "-stats_period", "0.2", "-f", "null", "-"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
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
        def listening() -> bool:
            return any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == self.port
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
