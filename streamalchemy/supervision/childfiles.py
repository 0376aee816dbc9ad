"""The files a child writes instead of pipes, and the lock that names it, in ``<data>/run``.

A pipe dies with its reader: when the daemon dies, FFmpeg's ``-progress`` writer fails
for good on the first EPIPE, and a pipe kept open but undrained fills and then blocks
FFmpeg in a write where it ignores SIGTERM. So each child's stdout (progress) and
stderr (its log lines) are files opened ``O_APPEND``: the daemon follows them (``Tail``)
and truncates each one as it reads it, so a file holds only what is not read yet; an
``O_APPEND`` writer continues at the new end, with no hole. A daemon that dies leaves
the unread part for the next one.

Each child also inherits the descriptor of its name's lock file, locked with ``flock``:
while that child lives, a non-blocking ``flock`` by anyone else fails, so a name never
runs twice, even when the children record is lost or two daemons launch at once. The
lock file holds the child's identity (``adoption.identity``) for the next daemon.

Nothing here spawns, signals or decides; ``procs`` spawns with these descriptors, and
``ChildReader`` turns what a child wrote into progress blocks and log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamalchemy.errors import OperationFailed
from streamalchemy.supervision.progress import Progress, ProgressParser
from streamalchemy.supervision.streamlog import LineSplitter

READ_CHUNK = 1 << 16
# What a file may hold for one read when the daemon was away: FFmpeg's log lines of a
# day without a daemon are not all worth reading; the last ones explain an exit.
UNREAD_KEPT = 1 << 20
# The identity written into a lock file: a newer daemon reads what an older one wrote,
# and refuses a format it does not know rather than guess.
FORMAT = 1

_WRITE = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def check_format(found: object, what: str) -> int:
    """The format of ``what``; one this daemon does not know is refused in one line."""
    if not isinstance(found, int) or found < 1:
        raise OperationFailed(f"{what}: no valid format version ({found!r}); remove the file")
    if found > FORMAT:
        raise OperationFailed(
            f"{what} was written by a newer StreamAlchemy (format {found}, this one reads "
            f"up to {FORMAT}): run the newer version, or stop its streams first"
        )
    return found


@dataclass(frozen=True)
class ChildIO:
    """The descriptors a child gets: stdout, stderr, and what else it inherits (its lock).

    ``outlive``: the child may outlive the daemon (live restore); otherwise the kernel
    kills it when the daemon dies (the parent-death signal).
    """

    stdout: int
    stderr: int
    keep: tuple[int, ...] = ()
    outlive: bool = True

    def close(self) -> None:
        """The daemon's copies, once the child has its own (or the spawn failed)."""
        for fd in {self.stdout, self.stderr, *self.keep}:
            with contextlib.suppress(OSError):
                os.close(fd)


class Tail:
    """Follows one file a child appends to: each read returns what is new and empties it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, _READ, 0o600)

    def read(self) -> bytes:
        """What was appended since the last read (its last ``UNREAD_KEPT`` bytes at most)."""
        if self._fd < 0:
            return b""
        chunks: list[bytes] = []
        offset = 0
        while data := os.pread(self._fd, READ_CHUNK, offset):
            offset += len(data)
            chunks.append(data)
            if len(chunks) * READ_CHUNK > 2 * UNREAD_KEPT:
                chunks = chunks[-(UNREAD_KEPT // READ_CHUNK) :]
        if not offset:
            return b""
        # What the child appends between the read and this truncation is lost: a
        # progress block (the next one comes in seconds) or, rarely, one log line.
        os.ftruncate(self._fd, 0)
        data = b"".join(chunks)
        return data[-UNREAD_KEPT:] if len(data) > UNREAD_KEPT else data

    def clear(self) -> None:
        """Empty the file before a new child writes it."""
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ChildFiles:
    """One child's files: ``NAME.progress``, ``NAME.log`` and ``NAME.lock`` in ``run_dir``.

    ``merged``: stdout and stderr go to the one log file (MediaMTX).
    """

    def __init__(self, run_dir: Path, name: str, *, merged: bool = False) -> None:
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock_path = run_dir / f"{name}.lock"
        self.lines = Tail(run_dir / f"{name}.log")
        self.progress = None if merged else Tail(run_dir / f"{name}.progress")

    def for_child(self, outlive: bool) -> ChildIO:
        """Fresh files and the name's lock for a new child; OperationFailed if it is held."""
        lock = take_lock(self.lock_path)
        if lock is None:
            raise OperationFailed(f"another FFmpeg of this name still runs ({self.holder()})")
        fds = [lock]
        try:
            self.lines.clear()
            fds.append(os.open(self.lines.path, _WRITE, 0o600))
            if self.progress is not None:
                self.progress.clear()
                fds.append(os.open(self.progress.path, _WRITE, 0o600))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        out = fds[-1]
        return ChildIO(stdout=out, stderr=fds[1], keep=(lock,), outlive=outlive)

    def holder(self) -> str:
        found = read_identity(self.lock_path)
        return f"pid {found['pid']}" if found and "pid" in found else "pid unknown"

    def forget(self) -> None:
        """The child has ended under supervision: no identity left for a next daemon."""
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.lock_path, 0)

    def close(self) -> None:
        self.lines.close()
        if self.progress is not None:
            self.progress.close()


def take_lock(path: Path) -> int | None:
    """The lock file's descriptor, locked (the caller owns it), or None if a child holds it."""
    fd = os.open(path, _READ, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def lock_is_held(path: Path) -> bool:
    """Whether a living process holds ``path``'s lock (its child inherited it)."""
    try:
        fd = take_lock(path)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


def write_identity(fd: int, identity: dict[str, Any]) -> None:
    """Write the child's identity into its lock file (through the still-open descriptor)."""
    data = json.dumps({"format": FORMAT, **identity}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def read_identity(path: Path) -> dict[str, Any] | None:
    """The identity a lock file holds; None if there is none. A newer format is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_uid != os.getuid():
            return None
        try:
            found = json.loads(f.read(READ_CHUNK) or b"null")
        except ValueError:
            return None
    if not isinstance(found, dict):
        return None
    check_format(found.get("format"), str(path))
    return found


class ChildReader:
    """Reads one child's files: its progress blocks, and its log lines into ``emit``."""

    def __init__(self, files: ChildFiles, emit: Callable[[str], None]) -> None:
        self.files = files
        self._parser = ProgressParser()
        self._lines = LineSplitter(emit)

    def read(self) -> Progress | None:
        """Emit the new log lines; return the last progress block completed, if any."""
        if data := self.files.lines.read():
            self._lines.feed(data)
        if self.files.progress is None:
            return None
        data = self.files.progress.read()
        return self._parser.feed(data) if data else None

    def end(self) -> Progress | None:
        """The child has ended: read what it left, and its last unterminated line."""
        block = self.read()
        self._lines.end()
        return block


async def follow(
    ended: Awaitable[int], read: Callable[[], object], every: Callable[[], float]
) -> int:
    """Call ``read`` every ``every()`` seconds until ``ended`` gives the child's exit status,
    and once more after it."""
    waiting = asyncio.ensure_future(ended)
    try:
        while not waiting.done():
            read()
            await asyncio.wait((waiting,), timeout=every())
    finally:
        if not waiting.done():
            waiting.cancel()
    read()
    return waiting.result()
