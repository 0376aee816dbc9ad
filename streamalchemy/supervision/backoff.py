"""Exponential backoff with jitter, for anything the daemon restarts (FFmpeg, MediaMTX)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff with jitter, so failing streams never retry in lockstep."""

    base: float = 1.0
    cap: float = 60.0
    healthy_after: float = 60.0
    failures: int = 0
    rand: random.Random = field(default_factory=random.Random)

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.healthy_after:
            self.failures = 0
        delay = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        return float(delay * self.rand.uniform(0.5, 1.0))
