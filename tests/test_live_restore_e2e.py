"""Live restore with the real daemon and real FFmpeg: a daemon killed with SIGKILL leaves
its streams running, and the next one adopts them without a gap."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import FFMPEG, Daemon, cli, cli_json, free_port, home_processes, wait_for

pytestmark = pytest.mark.e2e

FRAME = 1 / 25  # the clip's frame interval


@pytest.fixture(scope="module")
def clip25(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-second 25 fps H.264 clip, one keyframe a second, no audio."""
    path = tmp_path_factory.mktemp("media") / "clip25.mp4"
    subprocess.run(
        [
            *(FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"),
            *("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=4"),
            *("-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


class UdpReceiver:
    """Timestamps every datagram sent to its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.arrivals: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                self.sock.recv(65536)
            except TimeoutError:
                continue
            self.arrivals.append(time.monotonic())

    def worst_gap(self, since: float, until: float) -> float:
        """The longest silence between ``since`` and ``until``."""
        times = [since, *(t for t in list(self.arrivals) if since <= t <= until), until]
        return max(b - a for a, b in itertools.pairwise(times))

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def receiver() -> Iterator[UdpReceiver]:
    r = UdpReceiver()
    yield r
    r.stop()


def streams() -> dict[str, dict[str, object]]:
    """The daemon's streams by name; none while no daemon answers."""
    return {s["name"]: s for s in cli_json("list")[1].get("streams", [])}


def ffmpeg_of(home: Path) -> list[psutil.Process]:
    return [p for p in home_processes(home) if "ffmpeg" in p.name()]


def start(name: str, *args: str) -> None:
    proc = cli("start", name, *args, timeout=120)
    assert proc.returncode == 0, proc.stderr


def kill_daemon(d: Daemon) -> None:
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)


def flowing(name: str, pid: int) -> bool:
    """The stream runs adopted (same pid), its figures moving again."""
    first = streams().get(name)
    if first is None or first["pid"] != pid or first["status"] != "running":
        return False
    time.sleep(0.6)
    return int(streams()[name]["frames"] or 0) > int(first["frames"] or 0)  # type: ignore[call-overload]


def test_a_daemon_kill_and_the_next_launch_leave_no_gap(
    tmp_home: Path, clip25: Path, receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Daemon(tmp_home)
    udp = f"udp://127.0.0.1:{receiver.port}"
    start("u", "--file", str(clip25), "--codec", "copy", "--output", udp)
    start("n", "--file", str(clip25), "--codec", "copy", "--output", "null")
    wait_for(lambda: len(receiver.arrivals) > 50, 20, "datagrams")
    before = {name: s["pid"] for name, s in streams().items()}
    killed_at = time.monotonic()
    kill_daemon(d)
    monkeypatch.setenv("STREAMALCHEMY_AUTOSTART", "0")  # only the launches below
    # The next launch, five at once: one wins the home and adopts, the others give up.
    launches = 5
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "streamalchemy", "daemon", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(launches)
    ]
    try:
        for name, pid in before.items():
            assert isinstance(pid, int)
            wait_for(lambda n=name, p=pid: flowing(n, p), 20, f"{name} adopted, figures flowing")
        time.sleep(1)
        worst = receiver.worst_gap(killed_at - 1, time.monotonic())
        assert worst <= 3 * FRAME, f"{worst:.3f}s of silence"
        assert sum(r.poll() is None for r in runs) == 1  # one daemon remains
        pids = sorted(p.pid for p in ffmpeg_of(tmp_home))
        assert pids == sorted(before.values())  # one FFmpeg per name, the same ones
        assert "adopted FFmpeg" in cli("logs", "u").stdout
        events = cli_json("show", "u")[1]["exits"]
        assert any(e.get("event") == "adopted" for e in events)
    finally:
        for r in runs:
            if r.poll() is None:
                r.terminate()
                r.wait(20)
    assert not ffmpeg_of(tmp_home)  # a daemon stop still stops every stream


def test_hls_and_a_recording_go_on_in_the_same_files(tmp_home: Path, clip25: Path) -> None:
    rec = tmp_home / "rec.mp4"
    d = Daemon(tmp_home)
    start("h", "--file", str(clip25), "--codec", "copy", "--output", "hls")
    start("r", "--file", str(clip25), "--codec", "copy", "--output", str(rec))
    playlist = Path(str(streams()["h"]["current_output"]))
    wait_for(lambda: playlist.exists(), 20, "the playlist")

    def newest() -> str:
        """The playlist's newest segment ("" before the first)."""
        return ["", *re.findall(r"segment_\d+\.ts", playlist.read_text())][-1]

    wait_for(lambda: newest() >= "segment_00001.ts", 30, "HLS segments")
    before = {name: s["pid"] for name, s in streams().items()}
    kill_daemon(d)
    last, size = newest(), rec.stat().st_size
    d = Daemon(tmp_home)
    try:
        for name, pid in before.items():
            assert isinstance(pid, int)
            wait_for(lambda n=name, p=pid: flowing(n, p), 20, f"{name} adopted")
        wait_for(lambda: rec.stat().st_size > size, 10, "the recording to grow")
        wait_for(lambda: newest() > last, 20, "the playlist to go on")
        assert streams()["r"]["current_output"] == str(rec)
        assert sorted(p.name for p in tmp_home.glob("rec*.mp4")) == ["rec.mp4"]
        # A new FFmpeg would have marked where the picture starts again.
        assert "#EXT-X-DISCONTINUITY" not in playlist.read_text().partition(last)[2]
    finally:
        d.stop()


def test_a_limited_stream_ends_on_time_with_no_daemon(tmp_home: Path, clip25: Path) -> None:
    d = Daemon(tmp_home)
    start("t", "--file", str(clip25), "--codec", "copy", "--output", "null", "--duration", "6s")
    stream = streams()["t"]
    ends_at = float(stream["saved_at"]) + 6  # type: ignore[arg-type]
    ffmpeg = psutil.Process(int(stream["pid"]))  # type: ignore[call-overload]
    kill_daemon(d)
    wait_for(lambda: not ffmpeg.is_running() or ffmpeg.status() == "zombie", 30, "its end")
    ended = time.time()
    assert ends_at - 2 <= ended <= ends_at + 3, f"ended {ended - ends_at:+.1f}s off its deadline"
    d = Daemon(tmp_home)
    try:
        wait_for(lambda: "t" not in cli_json("saved")[1]["streams"], 20, "t to leave the file")
        assert not ffmpeg_of(tmp_home)
    finally:
        d.stop()


def test_an_ffmpeg_killed_with_no_daemon_is_restarted_at_adoption(
    tmp_home: Path, clip25: Path
) -> None:
    d = Daemon(tmp_home)
    start("k", "--file", str(clip25), "--codec", "copy", "--output", "null")
    old = int(streams()["k"]["pid"])  # type: ignore[call-overload]
    kill_daemon(d)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == "zombie", 10, "")
    d = Daemon(tmp_home)
    try:

        def restarted() -> bool:
            s = streams().get("k") or {}
            return s.get("status") == "running" and s.get("pid") not in (None, old)

        wait_for(restarted, 20, "k restarted")
        assert "ended while no daemon was running" in cli("logs", "k").stdout
        exits = cli_json("show", "k")[1]["exits"]
        assert exits[0]["code"] is None and "unknown" in exits[0]["reason"]
    finally:
        d.stop()
