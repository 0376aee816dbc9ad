"""Spawn and end FFmpeg process groups, and find the ones a dead daemon left behind.

Children are tied to the daemon twice: the kernel's parent-death signal (set by
``setpriv`` right before it execs FFmpeg, so no Python runs between fork and exec)
kills them when the daemon dies, even by SIGKILL; and a record of each child's pid,
start time and command line lets the next daemon end any survivor before it
restores, without ever killing an unrelated process that reuses the pid.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from streamalchemy.credentials import mask_argv

log = logging.getLogger("streamalchemy.procs")

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


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
        env=env,
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
    """The daemon's children, on disk, so that a successor can end any survivor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._children: dict[str, dict[str, Any]] = {}

    def add(self, name: str, pid: int, argv: Sequence[str]) -> None:
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.Error:
            return  # already gone: nothing to clean up later
        # Masked: the record names the process without holding its secrets.
        record = {"pid": pid, "create_time": create_time, "argv": mask_argv(list(argv))}
        self._children[name] = record
        self._write()

    def discard(self, name: str) -> None:
        if self._children.pop(name, None) is not None:
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self._children))
        os.replace(tmp, self.path)

    def reap_leftovers(self) -> list[int]:
        """Kill the children a previous daemon recorded that still run; return their pids."""
        try:
            recorded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            recorded = {}
        killed = []
        for name, rec in recorded.items() if isinstance(recorded, dict) else ():
            try:
                proc = psutil.Process(int(rec["pid"]))
                # Right after the fork the child may still be setpriv, not yet FFmpeg.
                argv = rec["argv"]
                same = abs(proc.create_time() - float(rec["create_time"])) < 0.01 and (
                    mask_argv(proc.cmdline()) in (argv, with_parent_death_signal(argv))
                )
            except (psutil.Error, KeyError, TypeError, ValueError):
                continue
            if same:
                log.warning(
                    "ending FFmpeg of %s left by a previous daemon (pid %d)", name, proc.pid
                )
                signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    proc.wait(5)
                killed.append(proc.pid)
        self._children = {}
        self._write()
        return killed
