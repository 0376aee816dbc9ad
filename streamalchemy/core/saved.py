"""The state file's entries: the original StreamAlchemy's format, read and written, and
the one deadline rule.

An entry is ``{"config": {...all strings...}, "saved_at": float, "status": ...}``;
``to_config`` writes a spec's config, ``spec_from_entry`` and ``read_saved`` read one
back through the same validation as a request (``spec.validated``). A stream ends for
good at ``deadline(saved_at, duration)``: a restore, a restart, the supervisor, ``show``
and ``list`` all ask this one function. Nothing here touches the file (that is
``persist``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamalchemy.core.durations import hours_text
from streamalchemy.core.options import SOURCE
from streamalchemy.core.spec import (
    SOURCE_TYPES,
    SavedHours,
    StreamSpec,
    blank,
    choice,
    either,
    validated,
)
from streamalchemy.errors import InvalidInput

# The original app's config keys, where they differ from the request's.
_ENTRY_LABELS = {
    "codec": "video_codec",
    "fps": "target_fps",
    "audio": "audio_codec",
    "hwaccel": "hardware_accel",
    "duration": "duration_hours",
}


def deadline(saved_at: float, duration: float) -> float | None:
    """When a stream saved (or first started) at ``saved_at`` ends for good; None: never."""
    return saved_at + duration if duration else None


def expired(saved_at: float, duration: float, now: float) -> bool:
    """Whether that deadline has passed at ``now``."""
    end = deadline(saved_at, duration)
    return end is not None and now >= end


def to_config(spec: StreamSpec) -> dict[str, str]:
    """The state file's ``config`` object, in the original StreamAlchemy's string format."""
    config = {
        "video_codec": spec.codec,
        # copy keeps neither; "" says so instead of a misleading default.
        "resolution": _config_size(spec.codec, spec.resolution),
        "target_fps": _config_size(spec.codec, spec.fps),
        "audio_enabled": _AUDIO_ENABLED.get(spec.audio, "yes"),
        # The original app reads a codec here: auto's re-encode is AAC.
        "audio_codec": "aac" if spec.audio == "auto" else spec.audio,
        "hardware_accel": {"none": "no", "auto": "yes"}.get(spec.hwaccel, spec.hwaccel),
        "duration_hours": hours_text(spec.duration),
        "stream_type": spec.source_type,
    }
    if spec.source_type == "file":
        config["video_file_path"] = spec.source
        config["file_source_type"] = "custom"
    elif spec.source_type == "rtsp":
        config["source_url"] = spec.source
    config.update(output=spec.output, restart=spec.restart, priority=str(spec.priority))
    return config


# The state file's audio_enabled for a spec's audio; a codec's is "yes".
_AUDIO_ENABLED = {"none": "no", "auto": "auto"}


def _config_size(codec: str, value: int | None) -> str:
    if codec == "copy":
        return ""
    return SOURCE if value is None else str(value)


def spec_from_entry(name: str, entry: Mapping[str, Any]) -> StreamSpec:
    """Validate a state-file entry, ours or the original StreamAlchemy's (all values strings)."""
    config = entry.get("config") if isinstance(entry, Mapping) else None
    if not isinstance(config, Mapping):
        raise InvalidInput(f"saved stream {name!r} has no config object")
    stream_type = config.get("stream_type")
    if stream_type not in SOURCE_TYPES:
        raise InvalidInput(f"invalid stream_type {stream_type!r}: use {either(SOURCE_TYPES)}")
    if stream_type == "file":
        source = config.get("video_file_path") or config.get("video_file")
    elif stream_type == "rtsp":
        source = config.get("source_url")
    else:
        source = ""
    # Absent: the original app kept a source's audio unless told "no"; auto does that.
    audio_enabled = choice(
        "audio_enabled", blank(config.get("audio_enabled")), ("yes", "no", "auto"), "auto"
    )
    hardware = config.get("hardware_accel")
    fields = {
        "codec": config.get("video_codec"),
        "resolution": config.get("resolution"),
        "fps": config.get("target_fps"),
        "audio": (config.get("audio_codec") or "aac")
        if audio_enabled == "yes"
        else {"no": "none", "auto": "auto"}[audio_enabled],
        "hwaccel": {"yes": "auto", "no": "none"}.get(hardware, hardware)
        if isinstance(hardware, str)
        else hardware,
        "duration": SavedHours(config.get("duration_hours")),
        "output": config.get("output"),
        "restart": config.get("restart"),
        "priority": config.get("priority"),
    }
    return validated(
        name,
        stream_type,
        source,
        {k: blank(v) for k, v in fields.items()},
        labels={**_ENTRY_LABELS, "file": "video_file_path", "url": "source_url"},
        refuse_copy_options=False,
    )


@dataclass(frozen=True)
class SavedStream:
    """One state-file entry as every reader sees it: its spec, or why it has none."""

    name: str
    spec: StreamSpec | None  # None when the entry is invalid
    saved_at: float
    priority: int
    error: str = ""  # why the entry is invalid

    @property
    def deadline(self) -> float | None:
        """When the stream ends for good; None when unlimited (or invalid)."""
        return None if self.spec is None else deadline(self.saved_at, self.spec.duration)


def read_saved(name: str, entry: Any) -> SavedStream:
    """The one view of a saved entry, for the restore, ``saved``, ``show`` and the renderer."""
    try:
        spec = spec_from_entry(name, entry)
        saved_at = float(entry["saved_at"])
    except (InvalidInput, KeyError, TypeError, ValueError) as exc:
        return SavedStream(name, None, 0.0, _loose_priority(entry), f"invalid saved entry: {exc}")
    return SavedStream(name, spec, saved_at, spec.priority)


def _loose_priority(entry: Any) -> int:
    """An invalid entry's priority, when it has a readable one, for the restore order."""
    try:
        return int(entry["config"].get("priority") or 0)
    except (TypeError, KeyError, AttributeError, ValueError):
        return 0
