"""The state file: the streams to bring back after a restart, a crash or a power cut.

Every read-modify-write holds an inter-process lock, and every write goes to a
fsynced temporary file renamed over the state file, so that the state file always
holds a complete document: a writer killed at any instant leaves the old one or
the new one, never half of either. Backups are hard links to earlier state files,
shifted with renames, so keeping them costs no copy and never touches the state
file itself. Entries are kept as the file has them (the original StreamAlchemy's
extra keys included); interpreting them is the restore's job, not this module's.

A removal that cannot be written (a full disk) is not forgotten: it is kept as a
marker beside the state file (an empty file costs no data block) and in memory,
every reader hides the name, and the next write that succeeds applies it. The
daemon runs every operation through ``StateWriter``: one thread, in order, off
its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import glob
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import filelock

from streamalchemy.errors import StateFileError

log = logging.getLogger("streamalchemy.persist")
LOCK_POLL = 0.002  # seconds between two tries of a held state lock

Document = dict[str, Any]
_MARKABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a stream name: safe as a file name
T = TypeVar("T")

_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def new_entry(config: Mapping[str, str], saved_at: float) -> dict[str, Any]:
    """The state file's record of one active stream."""
    return {"config": dict(config), "saved_at": saved_at, "status": "active"}


def _cause(exc: OSError) -> str:
    return _CAUSES.get(exc.errno or 0) or exc.strerror or str(exc)


def _parse(data: bytes) -> Document:
    """Parse a whole state document; ValueError when it is not a JSON object."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
    return doc


def _problem(entry: object) -> str | None:
    """Why ``entry`` cannot be used, or None when it can."""
    if not isinstance(entry, dict):
        return "not an object"
    if not isinstance(entry.get("config"), dict):
        return "no config object"
    saved_at = entry.get("saved_at")
    if isinstance(saved_at, bool) or not isinstance(saved_at, int | float):
        return "saved_at is not a number"
    if not math.isfinite(saved_at):
        return "saved_at is not finite"
    return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` another name of ``src``; a copy where the filesystem has no hard links."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:
        shutil.copyfile(src, dst)
    os.chmod(dst, 0o600)


class StateStore:
    """The state file at ``path``, its lock ``<path>.lock`` and backups ``<path>.backup.N``."""

    def __init__(
        self,
        path: Path,
        *,
        backup_count: int = 3,
        enabled: bool = True,
        lock_timeout: float = 5.0,
    ) -> None:
        # A state file the user made a symlink (to another disk, say) is resolved once:
        # writes then go atomically beside its target, and the symlink survives.
        self.path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
        self.backup_count = backup_count
        self.enabled = enabled
        self.lock_timeout = lock_timeout
        self._lock_path = Path(f"{self.path}.lock")
        # An flock on <path>.lock (created 0600, never through a symlink, kept on release so
        # that a plain flock of the same file, another version's, still excludes us).
        self._lock = filelock.FileLock(
            self._lock_path, timeout=lock_timeout, mode=0o600, preserve_lock_file=True
        )
        # Removals not written yet, for when even their marker could not be made.
        self._unwritten: set[str] = set()
        self._unwritten_lock = threading.Lock()  # the writer thread changes it, the loop reads
        self.write_error: str | None = None  # why the last write failed; None once one succeeds
        self.writes = 0  # writes attempted (for metrics), failed ones included
        self.write_errors = 0

    # -- the public operations -------------------------------------------------------

    def load(self) -> dict[str, dict[str, Any]]:
        """The usable entries; malformed ones are skipped with a warning but stay in the file."""
        if not self.enabled or not self.path.exists():
            return {}  # nothing saved yet: create nothing, not even the lock
        with self._locked(reading=True):
            doc = self._read()
        hidden = self.pending_removals()
        entries = {}
        for name, entry in doc.items():
            if name in hidden:
                continue  # stopped by the user; the write of its removal is still pending
            problem = _problem(entry)
            if problem is None:
                entries[name] = entry
            else:
                log.warning(
                    "%s: skipping entry %r (%s); it stays in the file", self.path, name, problem
                )
        return entries

    def save(self, name: str, entry: dict[str, Any]) -> None:
        """Add or replace one entry; every other entry is written back exactly as read."""

        def put(doc: Document) -> bool:
            doc[name] = entry
            return True

        self._update(put, create=True, keep=name)

    def remove(self, *names: str) -> list[str]:
        """Drop ``names`` from the file and return those that were in it."""
        present: list[str] = []

        def drop(doc: Document) -> bool:
            present.extend(n for n in dict.fromkeys(names) if n in doc)
            for n in present:
                del doc[n]
            return bool(present)

        try:
            self._update(drop)
        except StateFileError:
            self._mark_removed(names)
            raise
        return present

    def flush(self) -> None:
        """Write the pending removals, if any; StateFileError while it still cannot."""
        self._update(lambda doc: False)

    def clear(self) -> None:
        """Empty the file; the write rotates the previous contents into ``.backup.1``."""

        def empty(doc: Document) -> bool:
            had_entries = bool(doc)
            doc.clear()
            return had_entries  # rewriting {} would only push a useful backup out

        self._update(empty)

    # -- locking, reading, writing ---------------------------------------------------

    # -- removals whose write is pending ---------------------------------------------

    @functools.cached_property
    def _markers(self) -> Path:  # cached: a restore asks for the version once per stream
        return self.path.with_name(f".{self.path.name}.removed")

    def pending_removals(self) -> set[str]:
        """Names stopped by the user whose removal from the file is not written yet."""
        try:
            marked = set(os.listdir(self._markers))
        except OSError:
            marked = set()
        with self._unwritten_lock:
            return marked | self._unwritten

    def version(self) -> tuple[object, ...]:
        """What changes whenever the file or the pending removals do: a stat and a listdir."""
        try:
            st = os.stat(self.path)
            key: tuple[int, ...] | None = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        except OSError:
            key = None
        return key, frozenset(self.pending_removals())

    def _mark_removed(self, names: tuple[str, ...]) -> None:
        with self._unwritten_lock:
            self._unwritten.update(names)
        try:
            self._markers.mkdir(mode=0o700, exist_ok=True)
            # A name read from a hand-edited file may hold "/" or "..": memory only.
            for name in filter(_MARKABLE.fullmatch, names):
                flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(self._markers / name, flags, 0o600))
        except OSError as exc:
            log.warning("cannot record the pending removal of %s: %s", ", ".join(names), exc)

    def _forget_removed(self, names: set[str]) -> None:
        with self._unwritten_lock:
            self._unwritten.difference_update(names)
        for name in filter(_MARKABLE.fullmatch, names):
            with contextlib.suppress(OSError):
                (self._markers / name).unlink()
        with contextlib.suppress(OSError):
            self._markers.rmdir()  # only once empty

    def _update(
        self, change: Callable[[Document], bool], *, create: bool = False, keep: str = ""
    ) -> None:
        """Apply ``change`` to the document under the lock; write when it returns True.

        Pending removals are applied first (all but ``keep``, the name being saved).
        """
        if not self.enabled:
            return
        pending = self.pending_removals()
        if not (create or self.path.exists()):
            # Removing from or clearing a file that does not exist: touch nothing.
            self._forget_removed(pending)
            return
        wrote = False
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self._locked():
                doc = self._read()
                dropped = [n for n in pending if n in doc and n != keep]
                for name in dropped:
                    del doc[name]
                if change(doc) or dropped:
                    self._write(doc, rotate=True)
                    self.writes, wrote = self.writes + 1, True
        except (OSError, StateFileError) as exc:
            self.writes += 1
            self.write_errors += 1
            if isinstance(exc, OSError):
                exc = StateFileError(f"{self.path.parent}: cannot write there ({_cause(exc)})")
            self.write_error = str(exc)
            raise exc from None
        if wrote:
            self.write_error = None
        self._forget_removed(pending | {keep} if keep else pending)

    @contextlib.contextmanager
    def _locked(self, *, reading: bool = False) -> Iterator[None]:
        lock = self._lock_path
        try:
            # flock is polled, not queued: a short interval keeps the wait of a reader
            # behind the daemon's writer to about one write.
            self._lock.acquire(poll_interval=LOCK_POLL)
        except filelock.Timeout:
            raise StateFileError(
                f"{lock} is still locked after {self.lock_timeout:g}s: another streamalchemy"
                f" process (the daemon, `saved` or `clear`) holds it; retry, or see `fuser {lock}`"
            ) from None
        except OSError as exc:
            if not (reading and exc.errno == errno.EROFS):
                raise StateFileError(f"{lock}: cannot take the lock ({_cause(exc)})") from exc
            # On a read-only file system nothing can change the file: read it unlocked.
            yield
            return
        try:
            yield
        finally:
            self._lock.release()

    def _backups(self) -> list[Path]:
        return [
            self.path.with_name(f"{self.path.name}.backup.{i}")
            for i in range(1, self.backup_count + 1)
        ]

    def _read(self) -> Document:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateFileError(
                f"{self.path}: cannot read the state file ({_cause(exc)})"
            ) from exc
        try:
            return _parse(data)
        except ValueError as exc:
            return self._recover(str(exc))

    def _recover(self, why: str) -> Document:
        """Keep the unreadable file aside and put the newest backup that parses in its place."""
        for backup in self._backups():
            try:
                doc, source = _parse(backup.read_bytes()), f"using {backup}"
                break
            except (OSError, ValueError):
                continue
        else:
            doc, source = {}, "no backup parses, starting empty"
        try:
            for stamp in itertools.count(int(time.time())):
                corrupt = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
                with contextlib.suppress(FileExistsError):
                    _link(self.path, corrupt)
                    break
            log.warning("%s does not parse (%s): kept as %s; %s", self.path, why, corrupt, source)
            # Written back at once, so the state file never goes missing in between.
            self._write(doc, rotate=False)
        except (OSError, StateFileError) as exc:
            log.warning(
                "%s does not parse (%s) and cannot be replaced (%s); %s",
                self.path,
                why,
                exc,
                source,
            )
        return doc

    def _write(self, doc: Document, *, rotate: bool) -> None:
        """Replace the state file with ``doc``; a failure leaves the file and its backups intact."""
        data = json.dumps(doc, indent=2).encode() + b"\n"
        prefix = f".{self.path.name}.tmp-"
        tmp: str | None = None
        try:
            for stale in self.path.parent.glob(glob.escape(prefix) + "*"):
                stale.unlink()  # left by a writer killed mid-write: we hold the lock
            fd, tmp = tempfile.mkstemp(prefix=prefix, dir=self.path.parent)  # mode 0600
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if rotate:
                self._rotate()
            os.replace(tmp, self.path)
            tmp = None
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise StateFileError(
                f"{self.path}: cannot write the state file ({_cause(exc)})"
            ) from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _rotate(self) -> None:
        """Shift the backups up one and make the current state file ``.backup.1``.

        Runs only once the new contents are safely on disk. The state file is never
        renamed, only linked, so a kill between any two steps leaves it whole.
        """
        backups = self._backups()
        if not backups or not self.path.exists():
            return
        for older, newer in reversed(list(itertools.pairwise(backups))):
            with contextlib.suppress(FileNotFoundError):
                os.replace(older, newer)
        backups[0].unlink(missing_ok=True)  # still there only when backup_count is 1
        _link(self.path, backups[0])


class StateWriter:
    """The daemon's one writer: every state-file operation runs in one thread, in order.

    Lock waits and fsyncs never block the event loop, and a read queued after a write
    sees it.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="state-writer")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args))

    async def load(self) -> dict[str, dict[str, Any]]:
        return await self._run(self.store.load)

    async def save(self, name: str, entry: dict[str, Any]) -> None:
        await self._run(self.store.save, name, entry)

    async def remove(self, *names: str) -> list[str]:
        return await self._run(self.store.remove, *names)

    async def clear(self) -> None:
        await self._run(self.store.clear)

    async def flush(self) -> None:
        await self._run(self.store.flush)

    @property
    def ok(self) -> bool:
        return self.store.write_error is None

    @property
    def pending(self) -> bool:
        """A write failed or a removal still waits to be written."""
        return self.store.write_error is not None or bool(self.store.pending_removals())

    def close(self) -> None:
        self._thread.shutdown(wait=True)
