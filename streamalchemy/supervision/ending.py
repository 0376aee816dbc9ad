"""The end of a stream at its deadline: SIGTERM once, SIGKILL after the grace.

Nothing here decides when a stream ends; ``stream.Stream`` asks at each tick past
its deadline, and this sends the signal that is due.
"""

from __future__ import annotations

import math
import signal

from streamalchemy.supervision.procs import signal_group


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
