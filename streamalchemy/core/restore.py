"""Decide, per saved stream, what a restore does: the contract's restore rules.

Pure: the caller passes the clock, the file check and the encoder choice, and
carries out the plan (starting streams, removing expired entries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamalchemy.core.saved import deadline, read_saved
from streamalchemy.core.spec import StreamSpec
from streamalchemy.errors import EncoderUnavailable, StreamAlchemyError


@dataclass(frozen=True)
class Step:
    """What to do with one saved entry. ``spec`` is set when it is to be started."""

    name: str
    result: str  # "restored" (to start), "skipped" or "failed"
    reason: str
    spec: StreamSpec | None = None
    saved_at: float = 0.0
    encoder: str = ""
    expired: bool = False


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def plan(
    entries: Mapping[str, Any],
    *,
    running: Container[str],
    choose_encoder: Callable[[StreamSpec], str],
    now: float | None = None,
    file_exists: Callable[[str], bool] = lambda p: Path(p).is_file(),
    credentials_missing: Callable[[StreamSpec], str | None] = lambda spec: None,
) -> list[Step]:
    """Return one step per saved stream, highest priority first."""
    now = time.time() if now is None else now
    steps = []
    views = [read_saved(name, entry) for name, entry in entries.items()]
    for view in sorted(views, key=lambda v: (-v.priority, v.name)):
        name, spec, saved_at = view.name, view.spec, view.saved_at
        if name in running:
            steps.append(Step(name, "skipped", "already running"))
            continue
        if spec is None:
            steps.append(Step(name, "failed", view.error))
            continue
        end = deadline(saved_at, spec.duration)
        if end is not None and now >= end:
            over = now - end
            reason = f"expired: its {_ago(spec.duration)} duration ended {_ago(over)} ago"
            steps.append(Step(name, "skipped", reason, expired=True))
            continue
        if spec.source_type == "file" and not file_exists(spec.source):
            steps.append(Step(name, "skipped", f"source file not found: {spec.source}"))
            continue
        missing = credentials_missing(spec)
        if missing is not None:  # the reference may be provided later: kept in the file
            steps.append(Step(name, "skipped", missing))
            continue
        try:
            encoder = choose_encoder(spec)
        except EncoderUnavailable as exc:
            steps.append(Step(name, "skipped", str(exc)))
            continue
        except StreamAlchemyError as exc:  # FFmpeg itself is missing or broken
            steps.append(Step(name, "failed", str(exc)))
            continue
        steps.append(Step(name, "restored", "", spec=spec, saved_at=saved_at, encoder=encoder))
    return steps


def dry_run_results(steps: list[Step]) -> dict[str, dict[str, str]]:
    """The report of a restore that changes nothing."""
    return {
        s.name: {
            "result": s.result,
            "reason": "dry run: would be started" if s.result == "restored" else s.reason,
        }
        for s in steps
    }
