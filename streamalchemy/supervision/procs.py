"""Spawn and end children, and keep the record of them that the next daemon reads.

Each child runs in its own session (a SIGHUP to the daemon's terminal never reaches
it) and writes into files (``childfiles``), never into a pipe. With live restore on
(the default) it outlives the daemon, and the next daemon adopts it (``adoption``).
With live restore off, the kernel's parent-death signal (set by ``setpriv`` right
before it execs FFmpeg, so no Python runs between fork and exec) kills it when the
daemon dies, even by SIGKILL, and the next daemon ends any survivor before it
restores, never killing an unrelated process that reuses the pid.

The parent-death signal reaches only the process it was set on: a wrapper script
that runs FFmpeg without ``exec`` dies, and its FFmpeg lives on. So the next daemon
ends the recorded child's whole process group, each member checked to be ours: our
user, and either the recorded FFmpeg itself (start time, executable, argv) or a
process carrying the dead daemon's mark (``STREAMALCHEMY_DAEMON`` in its
environment, which every child inherits from the daemon).

The children record carries a format version (``RECORD_FORMAT``); a record without
one is an older daemon's (format 1), whose children wrote into pipes that died with
it: they are ended and restored, never adopted. A newer format is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from streamalchemy.core.masking import mask_argv, mask_document
from streamalchemy.errors import OperationFailed
from streamalchemy.supervision import adoption
from streamalchemy.supervision.childfiles import ChildFiles, ChildIO, write_identity

if TYPE_CHECKING:
    import psutil

log = logging.getLogger("streamalchemy.procs")

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
MARK_VAR = adoption.MARK_VAR
RECORD_FORMAT = 2
# At most this often the children record is rewritten while spawns come in a burst
# (a restore): each write replaces the whole file, and an ext4 rename over a file
# flushes it (~10 ms), so one write per spawn made a restore of N streams O(N^2).
RECORD_EVERY = 1.0


def mark_children() -> str:
    """Give this daemon a mark that every child inherits; return it.

    Called once by the daemon process before it spawns anything.
    """
    mark = f"{os.getpid()}-{time.time_ns()}"
    os.environ[MARK_VAR] = mark
    return mark


# What an FFmpeg child is given of the daemon's environment: the locale, time zone,
# paths, TLS and proxy settings, GPU drivers' switches, and the daemon's mark.
# Nothing else: the daemon's environment may hold ${NAME} credentials.
CHILD_ENV = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"}
    | {"SSL_CERT_FILE", "SSL_CERT_DIR", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY"}
    | {"HTTPS_PROXY", "NO_PROXY", "LIBVA_DRIVER_NAME", "LIBVA_DRIVERS_PATH", "VDPAU_DRIVER"}
    | {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "XDG_RUNTIME_DIR", MARK_VAR}
)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` an FFmpeg child gets (``CHILD_ENV`` and ``LC_*``)."""
    return {k: v for k, v in environ.items() if k in CHILD_ENV or k.startswith("LC_")}


def with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """Prefix argv so the kernel kills the child when the spawning thread dies."""
    if _SETPRIV is None:
        return list(argv)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


class Child(Protocol):
    """A child the supervisor watches: spawned here, or adopted (``adoption.Adopted``)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


async def spawn(
    argv: Sequence[str],
    io: ChildIO,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Child:
    """Start argv in its own session, writing into ``io``'s files; it inherits ``io.keep``.

    Without ``env``, the child gets ``child_environment``, not the daemon's whole one.

    Must be called from the event loop thread: the parent-death signal (live restore
    off) fires when the thread that forked the child exits, and the loop thread lives
    as long as the daemon.
    """
    return await asyncio.create_subprocess_exec(
        *(argv if io.outlive else with_parent_death_signal(argv)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=io.stdout,
        stderr=io.stderr,
        start_new_session=True,
        pass_fds=io.keep,
        cwd=cwd,
        env=child_environment(os.environ) if env is None else env,
    )


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop(proc: Child, grace: float) -> int:
    """Stop one FFmpeg process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            # A blocked network output can keep FFmpeg from exiting; never hang the daemon.
            signal_group(proc.pid, signal.SIGKILL)
    return await proc.wait()


class ChildRecord:
    """The daemon's children, on disk, so that a successor can end any survivor.

    The file is 0600 and written without following a symlink (a planted one is
    replaced, never written through); one planted by another user is not trusted.
    Failing to write it (a full disk) is logged, never raised: supervision goes on.

    On the event loop a change is written by a worker thread (an ext4 rename over the
    file waits for its data, up to tens of milliseconds on a busy disk), at most once
    per ``RECORD_EVERY`` while spawns come in a burst: one write carries every change
    since the last. A child not yet recorded here is still found: its identity is in
    its lock file (live restore), or the parent-death signal killed it with the daemon;
    ``flush`` writes the record now, before a start answers.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_dir = path.parent / "run" / "streams"  # each child's files (childfiles)
        self._children: dict[str, dict[str, Any]] = {}
        self._warned = False
        self._written_at = -RECORD_EVERY  # time.monotonic() of the last write begun
        self._due: asyncio.TimerHandle | None = None
        self._due_loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0  # of the latest document taken; each write is of one
        self._stored = 0  # of the document on disk
        self._next: tuple[int, str] | None = None  # for the worker thread
        self._busy = False  # a worker thread is writing
        self._mutex = threading.Lock()  # guards _next and _busy
        self._file_lock = threading.Lock()  # one write at a time, never an older one

    def add(
        self, name: str, pid: int, argv: Sequence[str], extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Record a new child; return its entry (None if it is already gone).

        The entry is the child's identity (``adoption.identity``) plus ``extra`` (where
        it writes, since when): what the next daemon needs to adopt it.
        """
        create_time = _create_time(pid)
        found = adoption.identity(pid, argv) if HAVE_PROC else None
        if create_time is None or (HAVE_PROC and found is None):
            return None  # already gone: nothing to clean up later
        entry = {**(found or {"pid": pid, "argv": mask_argv(list(argv))})}
        # Masked like the argv: an output URL (the target) may hold a password.
        masked = mask_document(dict(extra or {}))
        entry.update(create_time=create_time, mark=os.environ.get(MARK_VAR, ""), **masked)
        self.put(name, entry)
        return entry

    def spawned(
        self,
        name: str,
        pid: int,
        argv: Sequence[str],
        extra: Mapping[str, Any],
        lock: Sequence[int] = (),
    ) -> None:
        """Record a new child, its identity also in its ``lock`` file (found without this
        record). A full disk is logged: the stream matters more than the record."""
        try:
            entry = self.add(name, pid, argv, extra)
            if entry is not None and lock:
                write_identity(lock[0], entry)
        except OSError as exc:
            log.warning("%s: cannot record FFmpeg pid %d: %s", name, pid, exc)

    def ended(self, name: str, files: ChildFiles) -> None:
        """The child of ``name`` has ended: out of the record, its identity gone."""
        try:
            self.discard(name)
            files.forget()
        except OSError as exc:
            log.warning("%s: cannot update the children record: %s", name, exc)

    def put(self, name: str, entry: dict[str, Any]) -> None:
        """Record a child as it is (one adopted from a previous daemon keeps its entry)."""
        self._children[name] = entry
        self._changed()

    def discard(self, name: str) -> None:
        if self._children.pop(name, None) is not None:
            self._changed()

    def _changed(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        if self._due is not None:
            if self._due_loop is loop:
                return  # the write already due carries this change too
            self._due.cancel()  # set on a loop that is gone: it never fires
        wait = max(0.0, self._written_at + RECORD_EVERY - time.monotonic())
        self._due, self._due_loop = loop.call_later(wait, self._write_behind, loop), loop

    def _write_behind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = self._due_loop = None
        self._written_at = time.monotonic()
        taken = self._take()
        with self._mutex:
            self._next, start = taken, not self._busy
            self._busy = True
        if start:
            try:
                loop.run_in_executor(None, self._drain)
            except RuntimeError:  # the loop's executor is shut down: write here
                self._drain()

    def _drain(self) -> None:
        while True:
            with self._mutex:
                taken, self._next = self._next, None
                if taken is None:
                    self._busy = False
                    return
            self._store(*taken)

    def flush(self) -> None:
        """Write the record now if a change is not on disk yet."""
        if self._due is not None:
            self._due.cancel()
            self._due = self._due_loop = None
        elif self._stored == self._seq:
            return
        self._write()

    def _write(self) -> None:
        self._written_at = time.monotonic()
        self._store(*self._take())

    def _take(self) -> tuple[int, str]:
        """The record as it is now, numbered (on the loop's thread: the dict is its own)."""
        self._seq += 1
        # dumps: the C encoder; dump is Python
        return self._seq, json.dumps({"format": RECORD_FORMAT, "children": self._children})

    def _store(self, seq: int, text: str) -> None:
        with self._file_lock:
            if seq > self._stored:
                self._store_text(text)
                self._stored = seq

    def _store_text(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)  # replaces a symlink itself, never its target
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self._warned:
                log.warning("cannot record the FFmpeg children in %s: %s", self.path, exc)
            self._warned = True
        else:
            self._warned = False

    def _read(self) -> tuple[int, dict[str, Any]]:
        """The record's format and children; a format newer than ours is refused."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return RECORD_FORMAT, {}  # absent, or a symlink nobody of ours made
        with os.fdopen(fd) as f:
            if os.fstat(f.fileno()).st_uid != os.getuid():
                log.warning("ignoring %s: it belongs to another user", self.path)
                return RECORD_FORMAT, {}
            try:
                recorded = json.load(f)
            except ValueError:
                return RECORD_FORMAT, {}
        if not isinstance(recorded, dict):
            return RECORD_FORMAT, {}
        if "format" not in recorded:
            return 1, recorded  # an older daemon's: {name: entry}
        found = recorded["format"]
        if not isinstance(found, int) or found > RECORD_FORMAT:
            raise OperationFailed(
                f"{self.path} was written by a newer StreamAlchemy (format {found!r}, this one "
                f"reads up to {RECORD_FORMAT}): run the newer version, or stop its streams first"
            )
        children = recorded.get("children")
        return found, children if isinstance(children, dict) else {}

    def reap_leftovers(self) -> list[int]:
        """Kill what the children a previous daemon recorded left running; return the pids."""
        return self._reap(self._read()[1])

    def _reap(self, recorded: Mapping[str, Any]) -> list[int]:
        import psutil  # here: psutil's import costs every launch ~6 ms, most have no record

        killed: list[psutil.Process] = []
        for name, rec in recorded.items():
            try:
                leftovers = _leftovers(rec)
            except (KeyError, TypeError, ValueError):
                continue
            for proc in leftovers:
                log.warning(
                    "ending FFmpeg of %s left by a previous daemon (pid %d)", name, proc.pid
                )
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                killed.append(proc)
        psutil.wait_procs(killed, timeout=5)  # all at once: 5 s at most, not 5 s a name
        self._children = {}
        self._write()
        return [proc.pid for proc in killed]

    def survivors(self) -> dict[str, adoption.Survivor]:
        """Live restore: the children a previous daemon left, to adopt (on the event loop).

        Those of an older daemon that wrote into pipes (format 1) are ended instead.
        """
        version, recorded = self._read()
        if version == 1:
            killed = self._reap(recorded)
            if killed:
                log.warning("ended %d FFmpeg process(es) of an older daemon", len(killed))
            recorded = {}
        return adoption.find(recorded, self.run_dir)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
HAVE_PROC = os.path.isdir("/proc/self")


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (the state first); None once
    the process is gone. Only where ``HAVE_PROC``: psutil serves elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()
    except OSError:
        return None


def process_usage(pid: int) -> tuple[float, int] | None:
    """User + system CPU seconds and resident bytes of ``pid``; None once it is gone.

    One read of ``/proc/PID/stat`` where there is one (a scrape and ``list`` do this per
    stream: a third of what two psutil calls cost), psutil elsewhere.
    """
    if HAVE_PROC:
        fields = stat_fields(pid)
        try:
            return (
                None
                if fields is None
                else (
                    (int(fields[11]) + int(fields[12])) / _TICKS,
                    int(fields[21]) * _PAGE,
                )
            )
        except (ValueError, IndexError):
            return None
    import psutil  # only where there is no /proc: its import costs every launch

    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        return times.user + times.system, int(proc.memory_info().rss)
    except psutil.Error:
        return None


_boot: tuple[float, float] = (-60.0, 0.0)  # time.monotonic() when read, the boot time


def _boot_time() -> float:
    """The boot time of /proc/stat, read at most once a minute: generating /proc/stat
    costs ~0.4 ms (every CPU's and interrupt's counters), once per spawn in a restore."""
    global _boot
    now = time.monotonic()
    if now - _boot[0] >= 60:
        with open("/proc/stat", "rb") as f:
            btime = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
        _boot = (now, btime)
    return _boot[1]


def _create_time(pid: int) -> float | None:
    """psutil's ``Process(pid).create_time()`` (None once it is gone), from /proc where
    there is one: the boot time plus the start in clock ticks, as psutil computes it."""
    if HAVE_PROC:
        fields = stat_fields(pid)
        if fields is None:
            return None  # a Linux process that has ended
        try:
            return int(fields[19]) / _TICKS + _boot_time()
        except (OSError, ValueError, IndexError, StopIteration):
            pass
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _leftovers(rec: Mapping[str, Any]) -> list[psutil.Process]:
    """The recorded child, or what is left of its process group, that is still ours."""
    import psutil

    pgid = int(rec["pid"])
    argv = [str(a) for a in rec["argv"]]
    created = float(rec["create_time"])
    mark = str(rec.get("mark") or "")
    uid = os.getuid()
    found = []
    for pid in psutil.pids():  # fresh objects: process_iter's cache may hold a reused pid
        try:
            if pid == os.getpid() or (pid != pgid and os.getpgid(pid) != pgid):
                continue
            proc = psutil.Process(pid)
            if proc.uids().real != uid:
                continue
            if _is_recorded(proc, argv, created) or (mark and _has_mark(proc, mark)):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _is_recorded(proc: psutil.Process, argv: list[str], created: float) -> bool:
    """The very process recorded: same start time, executable and command line."""
    if abs(proc.create_time() - created) >= 0.01:
        return False
    cmdline = mask_argv(proc.cmdline())  # as recorded
    if cmdline == with_parent_death_signal(argv):
        return True  # right after the fork, still setpriv, not yet FFmpeg
    binary = shutil.which(argv[0]) if argv else None
    same_exe = binary is not None and os.path.realpath(binary) == os.path.realpath(proc.exe())
    return cmdline == argv and same_exe


def _has_mark(proc: psutil.Process, mark: str) -> bool:
    return bool(proc.environ().get(MARK_VAR) == mark)
