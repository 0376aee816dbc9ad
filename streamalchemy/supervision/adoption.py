"""Find the children a previous daemon left running, prove they are ours, and watch them.

Live restore: a daemon that dies without stopping its streams leaves every FFmpeg
running (their own session, no parent-death signal, no pipe to the dead daemon), and
the next daemon takes each one over instead of starting it again.

A process is taken only when everything recorded at its spawn still holds: our user,
this boot (``/proc/sys/kernel/random/boot_id``), its start time (field 22 of
``/proc/PID/stat``), its executable and argv, and the dead daemon's mark in its
environment. The pid is pinned with a pidfd before the check, so a pid reused after
the check is never the one watched or signalled.

How an adopted child's exit is classified: a pidfd says when a process ends, not how,
unless it is our own child (after a re-exec of the daemon, ``waitpid`` still works and
the code is known). An exit whose code cannot be known (``EXIT_UNKNOWN``) counts as a
failure, restarted under ``on-failure``, unless the stream's duration was reached; the
log's last lines, read from the child's file, give the reason when they have one. A
child that ended while no daemon ran is handled at adoption as such an exit.

Nothing here decides what to adopt: the controller adopts what the state file saves,
and stops the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamalchemy.core.masking import mask_argv
from streamalchemy.supervision.childfiles import lock_is_held, read_identity

log = logging.getLogger("streamalchemy.adoption")

PROC = Path("/proc")
MARK_VAR = "STREAMALCHEMY_DAEMON"
# The exit status of a child whose end was seen but whose code could not be known.
EXIT_UNKNOWN = -1000
# ``/proc/PID/stat`` field 22, the start time in clock ticks since boot, counted from
# the field after the command name (field 3).
_START_FIELD = 22 - 3


def boot_id(proc: Path = PROC) -> str:
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(proc: Path, pid: int) -> int:
    return int((proc / str(pid) / "stat").read_bytes().rpartition(b")")[2].split()[_START_FIELD])


def _executable(path: str) -> str:
    found = shutil.which(path) or path
    return os.path.realpath(found)


def identity(pid: int, argv: Sequence[str], proc: Path = PROC) -> dict[str, Any] | None:
    """What proves, later, that ``pid`` is still the child spawned with ``argv``; None
    once it is gone. Taken right after the spawn: the start time does not change at exec."""
    try:
        ticks = _start_ticks(proc, pid)
    except (OSError, ValueError, IndexError):
        return None
    return {
        "pid": pid,
        "uid": os.getuid(),
        "boot_id": boot_id(proc),
        "start_ticks": ticks,
        "exe": _executable(argv[0]) if argv else "",
        # Masked: the record names the process without holding its secrets.
        "argv": mask_argv(list(argv)),
        "mark": os.environ.get(MARK_VAR, ""),
    }


def is_ours(rec: Mapping[str, Any], proc: Path = PROC) -> bool:
    """Whether the process ``rec`` names still is the child it recorded (see the module)."""
    try:
        pid = int(rec["pid"])
        base = proc / str(pid)
        if rec["boot_id"] != boot_id(proc) or not rec["boot_id"]:
            return False
        if base.stat().st_uid != os.getuid() or int(rec["uid"]) != os.getuid():
            return False
        if _start_ticks(proc, pid) != int(rec["start_ticks"]):
            return False
        exe = os.readlink(base / "exe").removesuffix(" (deleted)")  # an upgraded FFmpeg
        raw = (base / "cmdline").read_bytes().split(b"\0")[:-1]
        cmdline = mask_argv([a.decode(errors="replace") for a in raw])
        argv = list(rec["argv"])
        if (exe, cmdline) != (rec["exe"], argv) and not _script_of(rec["exe"], exe, cmdline, argv):
            return False
        mark = f"{MARK_VAR}={rec['mark']}".encode()
        return bool(rec["mark"]) and mark in (base / "environ").read_bytes().split(b"\0")
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return False


def _script_of(script: str, exe: str, cmdline: list[str], argv: list[str]) -> bool:
    """Whether the process runs ``script`` through its ``#!`` interpreter ``exe``: the kernel
    makes that ``interpreter [one option] script args...``."""
    if cmdline[-len(argv) :] != argv or not 0 < len(cmdline) - len(argv) <= 2:
        return False
    try:
        with open(script, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    parts = first[2:].split() if first.startswith(b"#!") else []
    return bool(parts) and os.path.realpath(parts[0].decode(errors="replace")) == exe


class Adopted:
    """A process this daemon did not spawn (or spawned before a re-exec), watched by pidfd.

    Looks like an ``asyncio.subprocess.Process`` to the supervisor: ``pid``,
    ``returncode`` and ``wait()``. Made on the event loop's thread.
    """

    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self.returncode: int | None = None if pidfd is not None else EXIT_UNKNOWN
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = pidfd
        if pidfd is None:
            self._ended.set_result(EXIT_UNKNOWN)
        else:
            self._loop.add_reader(pidfd, self._exited)

    def _exited(self) -> None:
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        code = EXIT_UNKNOWN
        with contextlib.suppress(ChildProcessError):  # not our child: the code is lost
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                code = os.waitstatus_to_exitcode(status)
        self.returncode = code
        self._ended.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._ended)


@dataclass
class Survivor:
    """A child a previous daemon recorded: alive and ours, or ended while no daemon ran."""

    name: str
    record: dict[str, Any]
    process: Adopted
    lock: Path

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def forget(self) -> None:
        """Not adopted, and ended: its identity goes, lest the next daemon look again."""
        with contextlib.suppress(OSError):
            os.truncate(self.lock, 0)


def pin(pid: int) -> int | None:
    """A pidfd for ``pid``, None once it has ended."""
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


def find(recorded: Mapping[str, Mapping[str, Any]], run_dir: Path) -> dict[str, Survivor]:
    """Every child recorded (in the children record or a name's lock file), as a Survivor.

    Called on the event loop. A name whose lock is held by a process that cannot be
    proved ours is left out, and stays unstartable while that process lives.
    """
    entries = {name: dict(rec) for name, rec in recorded.items()}
    for lock in sorted(run_dir.glob("*.lock")):
        found = read_identity(lock)  # the lock file is the child's own, newer than the record
        if found and "pid" in found:
            entries[lock.stem] = found
    survivors: dict[str, Survivor] = {}
    for name, rec in entries.items():
        try:
            pid = int(rec["pid"])
        except (KeyError, TypeError, ValueError):
            continue
        lock = run_dir / f"{name}.lock"
        held = lock_is_held(lock)
        pidfd = pin(pid) if held else None
        if pidfd is not None and not is_ours(rec, PROC):
            os.close(pidfd)
            log.warning(
                "%s: the process holding its lock (recorded pid %d) is not the recorded "
                "FFmpeg; left alone",
                name,
                pid,
            )
            continue
        survivors[name] = Survivor(name, rec, Adopted(pid, pidfd), lock)
    return survivors
