"""The rules a stream runs by: its settings, the clock, the restart policy, and the words
its log and its exits use. Pure: nothing here runs or signals a process."""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from streamalchemy.supervision import procs
from streamalchemy.supervision.adoption import EXIT_UNKNOWN
from streamalchemy.supervision.childfiles import ChildIO
from streamalchemy.supervision.streamlog import LOG_BACKUPS, LOG_MAX_BYTES

# Why a stream is stopped, in the words its log and its exits show.
USER_STOP = "stopped by the user"
SHUTDOWN = "daemon shutting down; the stream comes back at its next launch"
REPLACED = "replaced by a new start of the same name"
USER_RESTART = "restarted by the user"
DURATION_REACHED = "duration reached"
SHED = "shed"  # stopped for lack of CPU, kept saved, brought back when there is room

# How often a stream reads its FFmpeg's files: a start waits for the first progress
# block, a running stream's figures come every stats period (2 s) anyway.
READ_STARTING = 0.05
READ_RUNNING = 1.0
# An FFmpeg ending this close to the deadline ended for it (its own -t, or our SIGTERM).
DEADLINE_MARGIN = 2.0
# A progress block counts only when the output time moved on this much: frames that
# count while the output's timestamps stand still (clamped after a reset) are a stall.
OUTPUT_ADVANCE_US = 100_000
# This many "Non-monotonous DTS" lines between two progress blocks: FFmpeg clamps every
# packet after its source's timestamps went back, and the output would stall for good.
CLAMPED_LINES = 20
CLAMPED = ("Non-monotonous DTS", "non monotonically increasing dts")
TIMESTAMPS_BACK = "the source's timestamps went back (it restarted or looped)"

Spawner = Callable[[Sequence[str], ChildIO], Awaitable[procs.Child]]
# Builds FFmpeg's argv for the file it writes and the seconds it has left (None: no end).
ArgvFor = Callable[[str, float | None], list[str]]


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class StreamSettings:
    """What every stream needs from the daemon's settings."""

    stall_timeout: float = 20.0
    grace: float = 5.0
    log_max_bytes: int = LOG_MAX_BYTES
    log_backups: int = LOG_BACKUPS
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    live_restore: bool = True


def should_restart(policy: str, exit_code: int | None, stalled: bool) -> bool:
    """Whether an FFmpeg that ended (not stopped by us) runs again under ``policy``."""
    if policy == "always":
        return True
    if policy == "never":
        return False
    return stalled or exit_code != 0


def exit_words(returncode: int) -> str:
    """How FFmpeg ended, in a log line's words."""
    if returncode == EXIT_UNKNOWN:
        return "ended; its exit code is unknown (adopted from a previous daemon)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
