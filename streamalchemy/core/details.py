"""The ``show`` document: a stream's spec as start options, status, deadline and exits.

Pure: the daemon passes a running stream's snapshot, or a saved entry for a stream
that does not run (the CLI does the same from the state file when the daemon is
down). Every source and output is masked here, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from streamalchemy.core.durations import duration_text
from streamalchemy.core.saved import deadline, read_saved
from streamalchemy.core.spec import StreamSpec, mask_credentials

if TYPE_CHECKING:
    from streamalchemy.core.documents import ShowResult, StreamDoc

# The status of a stream that is saved but not running (restore skipped it, or the
# daemon is down): not one of a running stream's statuses.
SAVED = "saved"


def spec_doc(spec: StreamSpec) -> dict[str, object]:
    """The spec as ``start`` options would give it again, credentials masked."""
    source: dict[str, object] = (
        {"testsrc": True}
        if spec.source_type == "testsrc"
        else {"file" if spec.source_type == "file" else "url": mask_credentials(spec.source)}
    )
    copy = spec.codec == "copy"
    return {
        "name": spec.name,
        **source,
        "codec": spec.codec,
        "resolution": None if copy else (spec.resolution or "source"),
        "fps": None if copy else (spec.fps or "source"),
        "audio": spec.audio,
        "hwaccel": spec.hwaccel,
        "duration": duration_text(spec.duration),
        "output": mask_credentials(spec.output) if spec.output else None,
        "restart": spec.restart,
        "priority": spec.priority,
    }


def running_details(snapshot: Mapping[str, Any], spec: StreamSpec) -> ShowResult:
    """``show`` for a stream the supervisor has (running, retrying, failed...)."""
    stream: StreamDoc = dict(snapshot)  # type: ignore[assignment]
    return {
        "success": True,
        "stream": stream,
        "spec": spec_doc(spec),
        "exits": list(snapshot.get("exits") or []),
        "deadline": deadline(float(snapshot["saved_at"]), spec.duration),
        "log_file": str(snapshot.get("log_file", "")),
    }


def saved_details(
    name: str,
    entry: Any,
    *,
    log_file: str,
    why: str,
    target: Callable[[StreamSpec], str],
    now: float | None = None,
) -> ShowResult:
    """``show`` for a saved stream that does not run: what the state file says, and why."""
    now = time.time() if now is None else now
    view = read_saved(name, entry)
    spec = view.spec
    deadline = view.deadline
    stream: StreamDoc = {
        "name": name,
        "status": SAVED,
        "pid": None,
        "source": (mask_credentials(spec.source) or "testsrc") if spec else "",
        "source_type": spec.source_type if spec else "",
        "output": mask_credentials(target(spec)) if spec else "",
        "codec": spec.codec if spec else "",
        "encoder": "",
        "restart": spec.restart if spec else "",
        "priority": view.priority,
        "saved_at": view.saved_at,
        "started_at": None,
        "uptime_seconds": None,
        "duration_seconds": (spec.duration or None) if spec else None,
        "remaining_seconds": None if deadline is None else max(0.0, deadline - now),
        "restarts": 0,
        "frames": None,
        "fps": None,
        "bitrate_kbps": None,
        "speed": None,
        "cpu_percent": None,
        "memory_mb": None,
        "last_error": mask_credentials(view.error or why),
        "log_file": log_file,
    }
    return {
        "success": True,
        "stream": stream,
        "spec": spec_doc(spec) if spec else {},
        "exits": [],
        "deadline": deadline,
        "log_file": log_file,
    }
