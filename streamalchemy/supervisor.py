"""Own the FFmpeg children of the daemon: spawn, watch progress, deadlines, restarts, stop.

Nothing here parses requests or touches the state file; the daemon decides, this
module carries it out and reports through ``on_end`` when a stream ends by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import psutil

from streamalchemy import procs
from streamalchemy.progress import (
    Progress,
    ProgressParser,
    clean_line,
    explain_failure,
    root_cause,
)
from streamalchemy.spec import StreamSpec, mask_credentials

ACTIVE = frozenset({"starting", "running", "retrying", "stopping"})
LOG_MAX_BYTES = 1 << 20


@dataclass
class Backoff:
    """Exponential backoff with jitter, so failing streams never retry in lockstep."""

    base: float = 1.0
    cap: float = 60.0
    healthy_after: float = 60.0
    failures: int = 0
    rand: random.Random = field(default_factory=random.Random)

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.healthy_after:
            self.failures = 0
        delay = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        return float(delay * self.rand.uniform(0.5, 1.0))


def should_restart(policy: str, exit_code: int, stalled: bool) -> bool:
    if policy == "always":
        return True
    if policy == "never":
        return False
    return stalled or exit_code != 0


class StreamLog:
    """One size-capped, rotated log per stream: FFmpeg's lines and lifecycle events."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tail: deque[str] = deque(maxlen=40)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._handler = RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=2)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))

    def _write(self, text: str) -> None:
        record = logging.LogRecord("stream", logging.INFO, "", 0, text, None, None)
        self._handler.emit(record)

    def ffmpeg(self, line: str) -> None:
        line = mask_credentials(clean_line(line))
        self.tail.append(line)
        self._write(line)

    def event(self, text: str) -> None:
        self._write(f"[streamalchemy] {mask_credentials(text)}")

    def close(self) -> None:
        self._handler.close()


class Stream:
    """One supervised stream: its FFmpeg process, live figures and restart loop."""

    def __init__(
        self,
        spec: StreamSpec,
        *,
        saved_at: float,
        encoder: str,
        argv: Sequence[str],
        target: str,
        log: StreamLog,
        supervisor: Supervisor,
    ) -> None:
        self.spec = spec
        self.saved_at = saved_at
        self.encoder = encoder
        self.argv = list(argv)
        self.target = target
        self.log = log
        self.status = "starting"
        self.restarts = 0
        self.started_at: float | None = None
        self.last_error: str | None = None
        self.progress = Progress()
        self.deadline = saved_at + spec.duration if spec.duration else None
        self._sup = supervisor
        self._proc: asyncio.subprocess.Process | None = None
        self._ps: psutil.Process | None = None
        self._progress_at = 0.0
        self._stopping = False
        self._stalled = False
        self._wake = asyncio.Event()
        self._confirmed: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._backoff = Backoff(rand=supervisor.rand)
        self.task = asyncio.create_task(self._run(), name=f"stream-{spec.name}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def remaining(self, now: float) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - now)

    async def confirmed(self, window: float) -> str | None:
        """Wait until FFmpeg reports progress (None) or fails (its reason).

        A process still alive after ``window`` seconds counts as started: a network
        source may take a while to send its first frame.
        """
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._confirmed), window)
        return None

    def _confirm(self, failure: str | None) -> None:
        if not self._confirmed.done():
            self._confirmed.set_result(failure)

    async def _run(self) -> None:
        try:
            while not self._stopping:
                if self.deadline is not None and time.time() >= self.deadline:
                    self._end("finished", "duration reached")
                    return
                ran_for, code = await self._run_once()
                if self._stopping:
                    return
                if self.deadline is not None and time.time() >= self.deadline - 1:
                    self._end("finished", "duration reached")
                    return
                reason = self._failure_reason(code)
                if reason:
                    self.last_error = reason
                    self._confirm(reason)
                if not should_restart(self.spec.restart, code, self._stalled):
                    self._end("failed" if reason else "finished", reason or "FFmpeg exited")
                    return
                delay = self._backoff.next_delay(ran_for)
                self.status = "retrying"
                self.log.event(f"restarting in {delay:.1f}s ({reason or 'exited'})")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                if not self._stopping:
                    self.restarts += 1
        finally:
            self._confirm(self.last_error or "stream ended")

    async def _run_once(self) -> tuple[float, int]:
        """Run FFmpeg once; return how long it ran and its exit code."""
        self.status = "starting"
        self._stalled = False
        self._progress_at = time.monotonic()
        self.log.tail.clear()
        try:
            proc = await procs.spawn(self.argv)
        except OSError as exc:
            self.log.event(f"cannot run {self.argv[0]}: {exc.strerror}")
            self.log.tail.append(f"cannot run {self.argv[0]}: {exc.strerror}")
            return 0.0, 127
        self._proc, self.started_at = proc, time.time()
        if self._stopping:  # stop() came while the fork was under way
            await procs.stop(proc, self._sup.grace)
        self._sup.record.add(self.spec.name, proc.pid, self.argv)
        self._ps = None
        self.log.event(f"started FFmpeg pid {proc.pid}")
        started = time.monotonic()
        assert proc.stdout is not None and proc.stderr is not None
        await asyncio.gather(self._read_progress(proc.stdout), self._read_log(proc.stderr))
        code = await proc.wait()
        self._sup.record.discard(self.spec.name)
        self.log.event(f"FFmpeg pid {proc.pid} exited with code {code}")
        return time.monotonic() - started, code

    async def _read_progress(self, stream: asyncio.StreamReader) -> None:
        parser = ProgressParser()
        while data := await stream.read(1 << 16):
            block = parser.feed(data)
            if block is None:
                continue
            previous, self.progress = self.progress, block
            if (block.frames, block.out_time_us) != (previous.frames, previous.out_time_us):
                self._progress_at = time.monotonic()
            if self.status == "starting" and not self._stopping:
                self.status = "running"
                self.last_error = None
                self._confirm(None)

    async def _read_log(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").strip()
            if line:
                self.log.ffmpeg(line)

    def _failure_reason(self, code: int) -> str | None:
        if self._stalled:
            return f"stalled: no progress for {self._sup.stall_timeout:g}s"
        if code == 0:
            return None
        cause = root_cause(list(self.log.tail))
        return explain_failure(cause, self.target) if cause else f"FFmpeg exited with code {code}"

    def _end(self, status: str, why: str) -> None:
        self.status = status
        self.log.event(f"{status}: {why}")
        self._sup.ended(self)

    def check(self, now: float, mono: float) -> None:
        """Called every second: enforce the deadline and catch stalled FFmpeg."""
        pid = self.pid
        if self.deadline is not None and now >= self.deadline and self.active:
            if pid is not None:
                procs.signal_group(pid, signal.SIGTERM)
            self._wake.set()
        elif (
            pid is not None
            and not (self._stalled or self._stopping)
            and mono - self._progress_at > self._sup.stall_timeout
        ):
            self._stalled = True
            self.log.event(f"no progress for {self._sup.stall_timeout:g}s: killing FFmpeg")
            procs.signal_group(pid, signal.SIGKILL)

    async def stop(self, grace: float) -> None:
        self._stopping = True
        if self.active:
            self.status = "stopping"
        self._wake.set()
        if self._proc is not None:
            await procs.stop(self._proc, grace)
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.log.event("stopped")
        self.log.close()

    def usage(self) -> tuple[float | None, float | None]:
        """CPU percent since the last call, and resident memory in MiB."""
        pid = self.pid
        if pid is None:
            return None, None
        try:
            if self._ps is None or self._ps.pid != pid:
                self._ps = psutil.Process(pid)
                self._ps.cpu_percent(None)
            return self._ps.cpu_percent(None), self._ps.memory_info().rss / 2**20
        except psutil.Error:
            return None, None

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        cpu, mem = self.usage()
        running = self.pid is not None and self.started_at is not None
        return {
            "name": self.spec.name,
            "status": self.status,
            "pid": self.pid,
            "source": mask_credentials(self.spec.source) if self.spec.source else "testsrc",
            "source_type": self.spec.source_type,
            "output": mask_credentials(self.target),
            "codec": self.spec.codec,
            "encoder": self.encoder,
            "restart": self.spec.restart,
            "priority": self.spec.priority,
            "saved_at": self.saved_at,
            "started_at": self.started_at,
            "uptime_seconds": now - self.started_at if running and self.started_at else None,
            "duration_seconds": self.spec.duration or None,
            "remaining_seconds": self.remaining(now),
            "restarts": self.restarts,
            "frames": self.progress.frames,
            "fps": self.progress.fps,
            "bitrate_kbps": self.progress.bitrate_kbps,
            "speed": self.progress.speed,
            "cpu_percent": cpu,
            "memory_mb": None if mem is None else round(mem, 1),
            "last_error": self.last_error,
            "log_file": str(self.log.path),
        }


class Supervisor:
    """All streams of the daemon, and the one-second tick that watches them."""

    def __init__(
        self,
        *,
        record: procs.ChildRecord,
        log_dir: Path,
        stall_timeout: float,
        on_end: Callable[[Stream], None],
        grace: float = 5.0,
        rand: random.Random | None = None,
    ) -> None:
        self.record = record
        self.log_dir = log_dir
        self.stall_timeout = stall_timeout
        self.grace = grace
        self.rand = rand or random.Random()
        self.streams: dict[str, Stream] = {}
        self._on_end = on_end
        self._ticker: asyncio.Task[None] | None = None

    def log_path(self, name: str) -> Path:
        return self.log_dir / "streams" / f"{name}.log"

    def launch(
        self, spec: StreamSpec, *, saved_at: float, encoder: str, argv: Sequence[str], target: str
    ) -> Stream:
        """Begin supervising a stream; the caller awaits ``Stream.confirmed``."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="supervisor-tick")
        stream = Stream(
            spec,
            saved_at=saved_at,
            encoder=encoder,
            argv=argv,
            target=target,
            log=StreamLog(self.log_path(spec.name)),
            supervisor=self,
        )
        previous = self.streams.get(spec.name)
        if previous is not None:
            previous.log.close()  # a finished or failed run of the same name
        self.streams[spec.name] = stream
        return stream

    def ended(self, stream: Stream) -> None:
        self._on_end(stream)

    async def stop(self, name: str) -> None:
        stream = self.streams.pop(name)
        await stream.stop(self.grace)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(name) for name in list(self.streams)))
        if self._ticker is not None:
            self._ticker.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now, mono = time.time(), time.monotonic()
            for stream in list(self.streams.values()):
                stream.check(now, mono)
