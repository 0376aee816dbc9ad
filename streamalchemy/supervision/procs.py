"""Spawn and end FFmpeg process groups, and find the ones a dead daemon left behind.

Children are tied to the daemon twice: the kernel's parent-death signal (set by
``setpriv`` right before it execs FFmpeg, so no Python runs between fork and exec)
kills them when the daemon dies, even by SIGKILL; and a record of each child's pid,
start time and command line lets the next daemon end any survivor before it
restores, without ever killing an unrelated process that reuses the pid.

The parent-death signal reaches only the process it was set on: a wrapper script
that runs FFmpeg without ``exec`` dies, and its FFmpeg lives on. So the next daemon
ends the recorded child's whole process group, each member checked to be ours: our
user, and either the recorded FFmpeg itself (start time, executable, argv) or a
process carrying the dead daemon's mark (``STREAMALCHEMY_DAEMON`` in its
environment, which every child inherits from the daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamalchemy.core.masking import mask_argv

if TYPE_CHECKING:
    import psutil

log = logging.getLogger("streamalchemy.procs")

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
MARK_VAR = "STREAMALCHEMY_DAEMON"
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


async def spawn(
    argv: Sequence[str],
    *,
    merge_output: bool = False,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """Start argv in its own process group, its stdout and stderr piped (or merged).

    Without ``env``, the child gets ``child_environment``, not the daemon's whole one.

    Must be called from the event loop thread: the parent-death signal fires when
    the thread that forked the child exits, and the loop thread lives as long as
    the daemon.
    """
    return await asyncio.create_subprocess_exec(
        *with_parent_death_signal(argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_output else asyncio.subprocess.PIPE,
        process_group=0,
        cwd=cwd,
        env=child_environment(os.environ) if env is None else env,
    )


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop(proc: asyncio.subprocess.Process, grace: float) -> int:
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
    since the last. A child not yet recorded is still killed with the daemon by its
    parent-death signal; ``flush`` writes the record now, before a start answers.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
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

    def add(self, name: str, pid: int, argv: Sequence[str]) -> None:
        create_time = _create_time(pid)
        if create_time is None:
            return  # already gone: nothing to clean up later
        self._children[name] = {
            "pid": pid,
            "create_time": create_time,
            # Masked: the record names the process without holding its secrets.
            "argv": mask_argv(list(argv)),
            "mark": os.environ.get(MARK_VAR, ""),
        }
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
        return self._seq, json.dumps(self._children)  # dumps: the C encoder; dump is Python

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

    def _read(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return {}  # absent, or a symlink nobody of ours made
        with os.fdopen(fd) as f:
            if os.fstat(f.fileno()).st_uid != os.getuid():
                log.warning("ignoring %s: it belongs to another user", self.path)
                return {}
            try:
                recorded = json.load(f)
            except ValueError:
                return {}
        return recorded if isinstance(recorded, dict) else {}

    def reap_leftovers(self) -> list[int]:
        """Kill what the children a previous daemon recorded left running; return the pids."""
        import psutil  # here: psutil's import costs every launch ~6 ms, most have no record

        killed: list[int] = []
        for name, rec in self._read().items():
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
                killed.append(proc.pid)
            psutil.wait_procs(leftovers, timeout=5)
        self._children = {}
        self._write()
        return killed


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


class Ending:
    """A stream's end at its deadline: SIGTERM once, then SIGKILL once the grace has
    passed (a blocked output can keep FFmpeg from exiting), as a stop does."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.since = 0.0

    def push(self, pid: int, mono: float, grace: float) -> bool:
        """Signal ``pid`` as its time says; True when it was SIGKILLed now."""
        if self.pid != pid:
            self.pid, self.since = pid, mono
            signal_group(pid, signal.SIGTERM)
        elif mono - self.since >= grace:
            self.since = math.inf  # killed: no more signals to this pid
            signal_group(pid, signal.SIGKILL)
            return True
        return False
