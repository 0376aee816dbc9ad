"""What every benchmark shares: a private home, a test clip, the daemon, statistics.

Every process started here is stopped here by its PID, every wait has a deadline,
and nothing is written outside the temporary home (except docs/benchmarks.md,
which run.py writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"

_SA_VARS = (
    "STREAMALCHEMY_SOCKET",
    "STREAM_PERSISTENCE_FILE",
    "ENABLE_STREAM_PERSISTENCE",
    "STREAM_PERSISTENCE_BACKUP_COUNT",
    "STREAMALCHEMY_RTSP_URL",
    "STREAMALCHEMY_AUTOSTART",
    "STREAMALCHEMY_FFMPEG",
    "STREAMALCHEMY_FFPROBE",
    "STREAMALCHEMY_STALL_TIMEOUT",
)


class BenchError(Exception):
    """A benchmark could not run; the message says why and what to look at."""


DOC = REPO / "docs" / "benchmarks.md"


def write_section(block: str, begin: str, end: str) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) into the benchmark
    page in place of the previous one between those markers, or at its end the first time."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block.strip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block.strip("\n") + "\n"
    DOC.write_text(text)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------


@dataclass
class Sample:
    """Repeated measurements of one figure."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 1,000 values is the 990th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5 - 1e-9)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One line of the results table: a figure, its baseline and the target on the ratio
    (``target_ratio``) or on the absolute value (``target_abs``), smaller being better."""

    bench: str
    measure: str
    unit: str
    result: Sample
    baseline: Sample | None
    baseline_name: str
    target_ratio: float | None = None
    target_abs: float | None = None
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.values or self.baseline.median == 0:
            return None
        return self.result.median / self.baseline.median

    @property
    def met(self) -> bool | None:
        if self.target_ratio is not None:
            return None if self.ratio is None else self.ratio <= self.target_ratio
        if self.target_abs is not None:
            return self.result.median <= self.target_abs
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "measure": self.measure,
            "unit": self.unit,
            "result": self.result.values,
            "baseline": self.baseline.values if self.baseline else None,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "target_ratio": self.target_ratio,
            "target_abs": self.target_abs,
            "met": self.met,
            "note": self.note,
        }


# -- homes, clips, environment ---------------------------------------------------------


@contextlib.contextmanager
def temp_home(tag: str) -> Iterator[Path]:
    """A short private STREAMALCHEMY_HOME under /tmp, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=f"sab-{tag}-", dir="/tmp"))
    os.chmod(home, 0o700)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def env_for(home: Path) -> dict[str, str]:
    """The environment of a streamalchemy process living in ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in _SA_VARS}
    env["STREAMALCHEMY_HOME"] = str(home)
    env["STREAMALCHEMY_AUTOSTART"] = "0"  # a benchmark starts its daemon itself
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # .pyc caches, as an installed package has
    return env


def make_clip(directory: Path, seconds: int = 10) -> Path:
    """A small 320x240 H.264 clip (keyframe every second) for ``--codec copy`` streams."""
    path = directory / "clip.mp4"
    cmd = [
        FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc=size=320x240:rate=15:duration={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-g", "15", "-pix_fmt", "yuv420p",
        "-an", str(path),
    ]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise BenchError(f"cannot make the test clip with {FFMPEG}: {exc}") from exc
    return path


def file_config(clip: Path) -> dict[str, str]:
    """A saved ``--file CLIP --codec copy --output null`` stream, in the state file's format."""
    return {
        "video_codec": "copy",
        "resolution": "1080",
        "target_fps": "15",
        "audio_enabled": "no",
        "audio_codec": "aac",
        "hardware_accel": "no",
        "duration_hours": "0",
        "stream_type": "file",
        "video_file_path": str(clip),
        "file_source_type": "custom",
        "output": "null",
        "restart": "on-failure",
        "priority": "0",
    }


def stream_names(n: int) -> list[str]:
    return [f"s{i:03d}" for i in range(n)]


def write_state(home: Path, clip: Path, n: int) -> dict[str, Any]:
    """Write a state file of ``n`` saved file streams (one atomic write, mode 0600)."""
    now = time.time()
    doc = {
        name: {"config": file_config(clip), "saved_at": now, "status": "active"}
        for name in stream_names(n)
    }
    path = home / "active_streams.json"
    tmp = path.with_name(path.name + ".bench-tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return doc


def ffmpeg_version() -> str:
    try:
        out = subprocess.run(
            [FFMPEG, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else "unknown"
    return first.split(" Copyright")[0].removeprefix("ffmpeg version ").strip()


# -- the daemon's socket ---------------------------------------------------------------


def http(sock_path: Path, method: str, path: str, timeout: float = 30.0) -> dict[str, Any]:
    """One raw HTTP/1.1 request on the daemon's Unix socket; the JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    _, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    reply: dict[str, Any] = json.loads(body)
    return reply


def kill_pids(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGKILL each process (and the group it leads, if any) and wait, bounded."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=timeout)


FINE_POLL = 0.02  # seconds between polls once most streams progress


class Daemon:
    """``streamalchemy daemon run`` in the foreground, in its own home, stopped by PID."""

    def __init__(self, home: Path, *args: str, profile_to: Path | None = None) -> None:
        self.home = home
        self.socket = home / "streamalchemy.sock"
        self.stderr_path = home / "daemon-stderr.txt"
        self._stderr = self.stderr_path.open("wb")
        self.started = time.monotonic()
        if profile_to is None:
            cmd = [PYTHON, "-m", "streamalchemy", "daemon", "run", *args]
        else:  # bench/profiled_daemon.py: cProfile switched by SIGUSR1/SIGUSR2
            cmd = [PYTHON, "-m", "bench.profiled_daemon", str(profile_to), *args]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env_for(home),
            cwd=home,
        )
        self._known_children: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _failure(self, what: str) -> BenchError:
        tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-15:]
        code = self.proc.poll()
        state = f"exited with code {code}" if code is not None else "still running"
        detail = "\n    ".join(tail) or "(no output)"
        return BenchError(f"the daemon {what} ({state}); its stderr:\n    {detail}")

    def get(self, path: str, timeout: float = 30.0) -> dict[str, Any]:
        return http(self.socket, "GET", path, timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the socket answers ``GET /status``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._failure("did not start")
            with contextlib.suppress(OSError, ValueError):
                if self.get("/status", timeout=5).get("success"):
                    return
            time.sleep(0.02)
        raise self._failure(f"did not answer on {self.socket} within {timeout:g}s")

    def streams(self) -> list[dict[str, Any]]:
        """``GET /streams``; [] while the socket is not up yet."""
        if self.proc.poll() is not None:
            raise self._failure("died")
        try:
            doc = self.get("/streams")
        except (OSError, ValueError):
            return []
        streams: list[dict[str, Any]] = doc.get("streams", [])
        return streams

    def wait_all_progress(self, n: int, timeout: float, interval: float = 0.1) -> float:
        """Poll until ``n`` streams report frames > 0; seconds since launch.

        Once 90% progress, every FINE_POLL seconds: the last ones are timed closely
        (the floor sees each progress block at once) without a poll's cost all along.
        """
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.streams()
            self.remember_children()
            going = sum(1 for s in last if (s.get("frames") or 0) > 0)
            if len(last) >= n and going == len(last):
                return time.monotonic() - self.started
            time.sleep(min(interval, FINE_POLL) if going >= 0.9 * n else interval)
        ok = sum(1 for s in last if (s.get("frames") or 0) > 0)
        errors = {s.get("last_error") for s in last if s.get("last_error")}
        raise self._failure(
            f"brought {ok}/{n} streams to progress within {timeout:g}s"
            + (f" (errors: {sorted(errors)[:3]})" if errors else "")
        )

    def remember_children(self) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self._known_children.add(child.pid)

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the daemon stops its FFmpeg children), then SIGKILL whatever is left."""
        self.remember_children()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log(f"daemon {self.pid} ignored SIGTERM for {timeout:g}s: killing it")
                    kill_pids([self.pid])
                    self.proc.wait(10)
        finally:
            leftovers = [p for p in self._known_children if psutil.pid_exists(p)]
            if leftovers:
                kill_pids(leftovers)
            self._stderr.close()


# -- FFmpeg argv, exactly as the daemon builds it --------------------------------------


def daemon_argvs(home: Path, entries: dict[str, Any]) -> list[list[str]]:
    """The argv the daemon would run for each saved entry (ffmpeg.build_argv)."""
    try:
        from streamalchemy import encoders
        from streamalchemy.core.saved import spec_from_entry
        from streamalchemy.settings import load_settings
        from streamalchemy.supervision.ffmpeg import build_argv
    except ImportError as exc:
        raise BenchError(f"streamalchemy does not import yet: {exc}") from exc
    settings = load_settings(env=env_for(home))
    table = encoders.detect(settings.ffmpeg, settings.data_dir)
    argvs = []
    for name, entry in entries.items():
        spec = spec_from_entry(name, entry)
        encoder = encoders.choose(spec.codec, spec.hwaccel, table)
        target = spec.target(settings.rtsp_url, settings.hls_dir)
        argvs.append(list(build_argv(spec, ffmpeg=settings.ffmpeg, encoder=encoder, target=target)))
    return argvs


def run_cmd(cmd: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 60.0) -> float:
    """Run one command to completion; its wall time in seconds. Fails on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    return elapsed


def bounded(fn: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
