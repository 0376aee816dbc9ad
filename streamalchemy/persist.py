"""The state file: the streams to bring back after a restart, a crash or a power cut.

Every read-modify-write holds an inter-process lock, and every write goes to a
fsynced temporary file renamed over the state file, so that the state file always
holds a complete document: a writer killed at any instant leaves the old one or
the new one, never half of either. Backups are hard links to earlier state files,
shifted with renames, so keeping them costs no copy and never touches the state
file itself. Entries are kept as the file has them (the original StreamAlchemy's
extra keys included); interpreting them is the restore's job, not this module's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from streamalchemy.errors import StateFileError

log = logging.getLogger("streamalchemy.persist")

Document = dict[str, Any]

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


def _flock(path: str, timeout: float, poll: float = 0.01) -> int:
    """Open ``path`` (0600) and hold an exclusive flock on it; the caller closes the fd.

    fcntl directly, not the filelock package, whose imports alone cost 20 ms of every
    ``saved --json``. Each holder has its own descriptor, so threads exclude each other
    too. flock is polled, not queued: a short interval keeps a waiter from starving
    behind a process that saves in a loop.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise TimeoutError(path) from None
            time.sleep(poll)
        except OSError:
            os.close(fd)
            raise


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
        self.path = Path(path)
        self.backup_count = backup_count
        self.enabled = enabled
        self.lock_timeout = lock_timeout
        self._lock_file = f"{self.path}.lock"

    # -- the public operations -------------------------------------------------------

    def load(self) -> dict[str, dict[str, Any]]:
        """The usable entries; malformed ones are skipped with a warning but stay in the file."""
        if not self.enabled or not self.path.exists():
            return {}  # nothing saved yet: create nothing, not even the lock
        with self._locked(reading=True):
            doc = self._read()
        entries = {}
        for name, entry in doc.items():
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

        self._update(put, create=True)

    def remove(self, *names: str) -> list[str]:
        """Drop ``names`` from the file and return those that were in it."""
        present: list[str] = []

        def drop(doc: Document) -> bool:
            present.extend(n for n in dict.fromkeys(names) if n in doc)
            for n in present:
                del doc[n]
            return bool(present)

        self._update(drop)
        return present

    def clear(self) -> None:
        """Empty the file; the write rotates the previous contents into ``.backup.1``."""

        def empty(doc: Document) -> bool:
            had_entries = bool(doc)
            doc.clear()
            return had_entries  # rewriting {} would only push a useful backup out

        self._update(empty)

    # -- locking, reading, writing ---------------------------------------------------

    def _update(self, change: Callable[[Document], bool], *, create: bool = False) -> None:
        """Apply ``change`` to the document under the lock; write when it returns True."""
        if not self.enabled or not (create or self.path.exists()):
            return  # removing from or clearing a file that does not exist: touch nothing
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked():
            doc = self._read()
            if change(doc):
                self._write(doc, rotate=True)

    @contextlib.contextmanager
    def _locked(self, *, reading: bool = False) -> Iterator[None]:
        lock = self._lock_file
        try:
            fd = _flock(lock, self.lock_timeout)
        except TimeoutError:
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
            os.close(fd)  # closing the descriptor releases the flock

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
