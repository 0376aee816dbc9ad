"""Size-capped, rotated log files (one per stream, MediaMTX's, the daemon's own), and
the splitter that turns a child's output into lines of bounded length for them.

Every write opens, appends and closes, so that the stream's supervisor, the
controller (a restore skip for a stream that is not running) and a rotation by
either never disagree on which file is current or how big it is. A write that
fails (a full disk) is dropped and counted, never raised: a log must not take a
stream or the daemon down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

from streamalchemy.core.spec import mask_credentials
from streamalchemy.supervision.progress import clean_line

LOG_MAX_BYTES = 10 << 20
LOG_BACKUPS = 3
# Longer FFmpeg lines are cut in the log: one line never fills a capped file alone,
# and masking a line stays cheap.
LINE_MAX_CHARS = 2000
# A URL the cut ends inside: dropped, lest half a password escape its mask.
_CUT_URL = re.compile(r"\S*://\S*$")


def _stamp(at: float) -> str:
    local = time.localtime(at)
    return time.strftime("%Y-%m-%d %H:%M:%S", local) + f",{int(at % 1 * 1000):03d}"


# A child's line longer than this is cut; the rest up to its newline is dropped.
LINE_MAX_BYTES = 8192


class LineSplitter:
    """Splits a child's output into lines ('\\n' or '\\r'), however long a line runs:
    each non-empty line goes to ``emit``, cut at ``LINE_MAX_BYTES``."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self._partial = b""
        self._overflow = False

    def feed(self, data: bytes) -> None:
        *lines, partial = (self._partial + data).replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            if self._overflow:
                self._overflow = False  # the end of a line already emitted, cut
                continue
            if line := raw.decode(errors="replace").strip():
                self.emit(line)
        if len(partial) > LINE_MAX_BYTES:
            if not self._overflow:
                self.emit(partial[:LINE_MAX_BYTES].decode(errors="replace").strip() + " [cut]")
            partial, self._overflow = b"", True
        self._partial = partial

    def end(self) -> None:
        """The child is gone: what is left is its last line."""
        partial, self._partial = self._partial, b""
        if partial and not self._overflow and (line := partial.decode(errors="replace").strip()):
            self.emit(line)
        self._overflow = False


class CappedFile:
    """Appends lines to ``path``; past ``max_bytes`` it becomes ``path.1`` (``.2``, ...)."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.errors = 0

    def write(self, text: str) -> None:
        data = (text + "\n").encode(errors="replace")
        if len(data) > self.max_bytes:
            data = data[: self.max_bytes - 1] + b"\n"
        try:
            self._append(data)
        except OSError:
            self.errors += 1  # a full or read-only disk: the stream runs on regardless

    def _append(self, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            if os.fstat(fd).st_size + len(data) > self.max_bytes:
                os.close(fd)
                fd = -1
                self._rotate()
                fd = os.open(self.path, flags, 0o600)
            os.write(fd, data)
        finally:
            if fd >= 0:
                os.close(fd)

    def _rotate(self) -> None:
        if self.backups == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))


class StreamLog:
    """One capped, rotated log per stream: FFmpeg's lines and lifecycle events."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS):
        self.path = path
        self.tail: deque[str] = deque(maxlen=40)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file = CappedFile(path, max_bytes, backups)

    def _write(self, text: str) -> None:
        self._file.write(f"{_stamp(time.time())} {text}")

    def ffmpeg(self, line: str) -> None:
        line = clean_line(line)
        if len(line) > LINE_MAX_CHARS:
            more = len(line) - LINE_MAX_CHARS
            line = f"{_CUT_URL.sub('', line[:LINE_MAX_CHARS])}... ({more} more characters)"
        line = mask_credentials(line)
        self.tail.append(line)
        self._write(line)

    def event(self, text: str) -> None:
        self._write(f"[streamalchemy] {mask_credentials(text)}")

    def close(self) -> None:
        """Nothing stays open between writes; kept so callers need not know."""


def append_event(
    path: Path, text: str, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
) -> None:
    """Add one lifecycle line to a stream's log when no stream object is there to do it.

    A restore that skips a stream says so in ``logs NAME`` as well as in the daemon log.
    """
    StreamLog(path, max_bytes, backups).event(text)


class CappedHandler(logging.Handler):
    """A logging handler writing through a CappedFile: the daemon log obeys the same cap.

    (The standard RotatingFileHandler never rotates when asked to keep 0 copies.)
    """

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS):
        super().__init__()
        self._file = CappedFile(path, max_bytes, backups)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a bad format argument: the handler must not raise
            self.handleError(record)
            return
        self._file.write(text)


LOG_KEEP_SECONDS = 7 * 86400  # the logs of a name no longer saved nor running, kept a week
LOG_KEEP_NAMES = 100  # and of at most this many such names, the most recently written
_STREAM_LOG = re.compile(r"(?P<name>[A-Za-z0-9_-]{1,64})\.log(?:\.\d{1,3})?")


def sweep_logs(
    directory: Path,
    keep: set[str],
    now: float,
    max_age: float = LOG_KEEP_SECONDS,
    max_names: int = LOG_KEEP_NAMES,
) -> list[str]:
    """Remove the stream logs of names not in ``keep`` that are older than ``max_age``,
    or past the ``max_names`` most recently written; return the names removed.

    As ``pm2 flush`` or logrotate's ``maxage``, for streams that are gone: the logs of
    the streams that run or are saved stay, whatever their age. Blocking: call it in
    a thread.
    """
    files: dict[str, list[tuple[Path, float]]] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        m = _STREAM_LOG.fullmatch(entry.name)
        if m is None or m["name"] in keep:
            continue
        with contextlib.suppress(OSError):
            files.setdefault(m["name"], []).append((Path(entry.path), entry.stat().st_mtime))
    newest = sorted(files, key=lambda n: max(t for _, t in files[n]), reverse=True)
    gone = [
        name
        for rank, name in enumerate(newest)
        if rank >= max_names or now - max(t for _, t in files[name]) > max_age
    ]
    for name in gone:
        for path, _ in files[name]:
            with contextlib.suppress(OSError):
                path.unlink()
    return gone


class LogSweeper:
    """``sweep_logs`` of ``log_dir/streams``, at most once every ``every`` seconds, in a
    thread, keeping the logs of the streams ``saved`` (the state file) or ``running`` names."""

    def __init__(
        self,
        log_dir: Path,
        saved: Callable[[], Awaitable[Mapping[str, object]]],
        running: Callable[[], Iterable[str]],
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory, self.saved, self.running = log_dir / "streams", saved, running
        self.every, self.clock = every, clock
        self.swept_at: float | None = None

    def poke(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        """Have ``spawn`` run a sweep, unless one ran less than ``every`` seconds ago."""
        now = self.clock()
        if self.swept_at is None or now - self.swept_at >= self.every:
            self.swept_at = now
            spawn(self.sweep())

    async def sweep(self) -> None:
        keep = set(self.running()) | set(await self.saved())
        gone = await asyncio.to_thread(sweep_logs, self.directory, keep, time.time())
        if gone:
            logging.getLogger("streamalchemy.daemon").info(
                "removed the logs of %d stream(s) long gone", len(gone)
            )
