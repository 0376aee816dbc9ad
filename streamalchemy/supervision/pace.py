"""Recent rates: a stream's speed and CPU over the last seconds, and the host's idle CPU.

FFmpeg's ``speed=`` is an average since its start: after an hour below real time it
takes minutes to show a recovery. A ``Window`` keeps the samples of a growing figure
(output seconds, CPU seconds) for the last ``WINDOW`` seconds and gives its rate over
them, which is what shedding judges by. Only ``host_cpu`` reads a file (/proc/stat);
the rest is bookkeeping fed by its callers, with their clock.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

WINDOW = 10.0  # seconds of samples a rate is taken over
MIN_SPAN = 4.0  # fewer seconds than this between the first and last sample: no rate yet
PROC_STAT = Path("/proc/stat")


class Window:
    """Samples ``(t, value)`` of a figure that only grows, kept for ``span`` seconds.

    A value lower than the last one means the figure started again (a new FFmpeg):
    the older samples are dropped. ``rate`` is the least-squares slope of the samples,
    so that the jitter of when each one was taken averages out.
    """

    def __init__(self, span: float = WINDOW, min_span: float = MIN_SPAN) -> None:
        self.span = span
        self.min_span = min_span
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        if self._samples and value < self._samples[-1][1]:
            self._samples.clear()
        self._samples.append((t, value))
        while self._samples[0][0] < t - self.span:
            self._samples.popleft()

    def clear(self) -> None:
        self._samples.clear()

    def rate(self) -> float | None:
        """Growth per unit of ``t`` over the window; None until it spans ``min_span``."""
        samples = self._samples
        if len(samples) < 2 or samples[-1][0] - samples[0][0] < self.min_span:
            return None
        n = len(samples)
        mean_t = sum(t for t, _ in samples) / n
        mean_v = sum(v for _, v in samples) / n
        spread = sum((t - mean_t) ** 2 for t, _ in samples)
        return sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread


class HostIdle:
    """The host's idle CPU over the window, in percent of one core (2 idle cores: 200).

    Fed with /proc/stat's counters: idle time against the elapsed time per core, both
    in the kernel's ticks, so no clock is needed.
    """

    def __init__(self, cores: int | None = None, span: float = WINDOW) -> None:
        self.cores = cores or os.cpu_count() or 1
        self._window = Window(span * _ticks_per_second(), MIN_SPAN * _ticks_per_second())

    def add(self, idle_ticks: int, total_ticks: int) -> None:
        self._window.add(total_ticks / self.cores, float(idle_ticks))

    def percent(self) -> float | None:
        rate = self._window.rate()
        return None if rate is None else round(100 * min(max(rate, 0.0), self.cores), 1)


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


def host_cpu(path: Path = PROC_STAT) -> tuple[int, int] | None:
    """Idle (idle + iowait) and total ticks of all CPUs since boot; None if unreadable."""
    try:
        with path.open("rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[3] + ticks[4], sum(ticks)
