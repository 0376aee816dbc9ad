"""One validated stream spec for the ``start`` request, the HTTP API body and the state file.

A new stream and a restored one pass through the same ``validated`` so that a
hand-edited or old state file obeys the same rules as the command line. Nothing
here starts processes; the only file-system look is whether an output file's
directory exists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

from streamalchemy.core import outputs
from streamalchemy.core.durations import parse_duration, parse_duration_hours

# The one masking function lives in masking; imported from here too.
from streamalchemy.core.masking import mask_credentials as mask_credentials
from streamalchemy.core.masking import mask_url
from streamalchemy.core.names import validate_name as validate_name
from streamalchemy.core.options import (
    BY_NAME,
    FPS_RANGE,
    RESOLUTIONS,
    SOURCE,
    START_OPTIONS,
)
from streamalchemy.errors import InvalidInput

SOURCE_TYPES = ("file", "rtsp", "testsrc")
SOURCE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp")

INTEGER_MAX = 999_999_999  # nine digits, the most a saved string field may hold
PRIORITY_ACCEPTED = f"a whole number from -{INTEGER_MAX} to {INTEGER_MAX}"


_REQUEST_KEYS = frozenset({"name", *BY_NAME})


@dataclass(frozen=True)
class StreamSpec:
    """What to stream and how; the daemon, the supervisor and the state file share it."""

    name: str
    source_type: str  # "file" | "rtsp" (any URL) | "testsrc"
    source: str  # absolute file path, URL, or "" for testsrc
    codec: str = "h264"
    resolution: int | None = None  # None: the source's (and always with codec copy)
    fps: int | None = None  # None: the source's (and always with codec copy)
    audio: str = "auto"  # "auto": the source's audio kept, if it has any
    hwaccel: str = "none"
    duration: float = 0.0  # seconds, 0 = unlimited
    output: str = ""  # "" = default RTSP URL, "null", "hls", a URL or an absolute file path
    restart: str = "on-failure"
    priority: int = 0

    def target(self, rtsp_url: str, hls_dir: PurePath) -> str:
        """Where the stream goes, as users see it: the URL, the HLS playlist or file path."""
        return outputs.target(self.output, self.name, rtsp_url, hls_dir)


def check_option(key: str, value: object) -> None:
    """Refuse a bad value of a ``start`` option as early as the command line, by the same
    rule the daemon applies (choices, the fps range, the duration forms)."""
    option = START_OPTIONS[key]
    if option.choices:
        choice(key, value, option.choices, option.default)
    elif key == "fps":
        _fps(key, value)
    elif key == "duration":
        _duration(key, value)


def source_kind(body: Mapping[str, Any]) -> str:
    """Which one source ``body`` gives: "file", "url" or "testsrc"; refuse none or several."""
    testsrc = body.get("testsrc")
    if testsrc is not None and not isinstance(testsrc, bool):
        raise InvalidInput(f"invalid testsrc {testsrc!r}: use true or false")
    given = [k for k in ("file", "url") if body.get(k) is not None]
    given += ["testsrc"] if testsrc else []
    if len(given) != 1:
        raise InvalidInput(
            "give exactly one source: --file PATH, --url URL or --testsrc "
            f"(got {', '.join(given) or 'none'})"
        )
    return given[0]


def spec_from_request(body: Mapping[str, Any]) -> StreamSpec:
    """Validate the body of ``POST /streams``, which the CLI sends; missing or null = default."""
    if not isinstance(body, Mapping):
        raise InvalidInput("the request body must be a JSON object")
    unknown = sorted(set(body) - _REQUEST_KEYS)
    if unknown:
        raise InvalidInput(
            f"unknown field {unknown[0]!r}: known fields are {', '.join(sorted(_REQUEST_KEYS))}"
        )
    kind = source_kind(body)
    source_type = {"file": "file", "url": "rtsp", "testsrc": "testsrc"}[kind]
    return validated(
        body.get("name"),
        source_type,
        "" if kind == "testsrc" else body[kind],
        {key: body.get(key) for key in _FIELDS},
        labels={"file": "file", "url": "url"},
        refuse_copy_options=True,
    )


# -- the one validation path -------------------------------------------------------------

_FIELDS = (
    "codec",
    "resolution",
    "fps",
    "audio",
    "hwaccel",
    "duration",
    "output",
    "restart",
    "priority",
)
_COPY_REFUSES = ("resolution", "fps", "hwaccel")


@dataclass(frozen=True)
class SavedHours:
    """A saved ``duration_hours``: plain hours, unlike a request's ``duration``."""

    value: object


def blank(value: object) -> object:
    """None for what the original app writes when a value does not apply: "" or null."""
    return None if isinstance(value, str) and not value.strip() else value


def either(choices: tuple[object, ...]) -> str:
    words = [str(c) for c in choices]
    return ", ".join(words[:-1]) + " or " + words[-1]


def validated(
    name: object,
    source_type: str,
    source: object,
    fields: Mapping[str, object],
    *,
    labels: Mapping[str, str],
    refuse_copy_options: bool,
) -> StreamSpec:
    """Check every field and return the spec.

    A request giving resolution, fps or hwaccel with codec copy is refused; a saved
    entry keeps them and they are ignored, as the contract says.
    """

    def label(field: str) -> str:
        return labels.get(field, field)

    name = validate_name(name)
    codec = _option("codec", label, fields)
    copy = codec == "copy"
    if copy:
        explicit = [f for f in _COPY_REFUSES if fields[f] is not None]
        if explicit and refuse_copy_options:
            raise InvalidInput(
                f"{label(explicit[0])} {fields[explicit[0]]!r} cannot be used with codec copy, "
                "which does not re-encode: drop it or choose h264, h265 or mpeg4"
            )
        if source_type == "testsrc":
            raise InvalidInput(
                "codec copy needs a file or url source: testsrc is generated, "
                "so use h264, h265 or mpeg4"
            )
    resolution = None if copy else _resolution(label("resolution"), fields["resolution"])
    fps = None if copy else _fps(label("fps"), fields["fps"])
    hwaccel = "none" if copy else _option("hwaccel", label, fields)
    audio = _option("audio", label, fields)
    output = _output(fields["output"])
    _check_container(codec, audio, output)
    source = _source(source_type, source, label)
    is_file = outputs.kind_of(output).is_file
    if source_type == "file" and is_file and os.path.realpath(source) == os.path.realpath(output):
        # FFmpeg's -y would overwrite the video while it reads it.
        raise InvalidInput(f"invalid output {output!r}: it is the source file; choose another path")
    return StreamSpec(
        name=name,
        source_type=source_type,
        source=source,
        codec=codec,
        resolution=resolution,
        fps=fps,
        audio=audio,
        hwaccel=hwaccel,
        duration=_duration(label("duration"), fields["duration"]),
        output=output,
        restart=_option("restart", label, fields),
        priority=_integer(label("priority"), fields["priority"], 0, PRIORITY_ACCEPTED),
    )


def _option(key: str, label: Callable[[str], str], fields: Mapping[str, object]) -> str:
    """A choice option of START_OPTIONS: its default when missing, else one of its choices."""
    option = START_OPTIONS[key]
    return choice(label(key), fields[key], option.choices, option.default)


def choice(field: str, value: object, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise InvalidInput(f"invalid {field} {value!r}: use {either(choices)}")
    return str(value)


def _integer(field: str, value: object, default: int, accepted: str = "a whole number") -> int:
    """An int, or its decimal text (the state file keeps numbers as strings)."""
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) <= INTEGER_MAX:  # what a saved string can hold: start and restore agree
            return value
        raise InvalidInput(f"invalid {field} {value!r}: use {accepted}")
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,9}\s*", value):
        return int(value)
    raise InvalidInput(f"invalid {field} {value!r}: use {accepted}")


def _is_source(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == SOURCE)


def _resolution(field: str, value: object) -> int | None:
    """An output height, or None for the source's own size."""
    if _is_source(value):
        return None
    accepted = f"{SOURCE}, {either(RESOLUTIONS)}"
    resolution = _integer(field, value, 0, accepted)
    if resolution not in RESOLUTIONS:
        raise InvalidInput(f"invalid {field} {value!r}: use {accepted}")
    return resolution


def _fps(field: str, value: object) -> int | None:
    """A frame rate, or None for the source's own rate."""
    if _is_source(value):
        return None
    low, high = FPS_RANGE
    accepted = f"{SOURCE} or a whole number from {low} to {high}"
    fps = _integer(field, value, 0, accepted)
    if not low <= fps <= high:
        raise InvalidInput(f"invalid {field} {value!r}: use {accepted}")
    return fps


def _duration(field: str, value: object) -> float:
    """Whole seconds, so that the state file's 6-decimal hours read back to the same spec."""
    if isinstance(value, SavedHours):
        seconds = parse_duration_hours(value.value)
    elif value is None:
        seconds = 0.0
    elif isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidInput(f"invalid {field} {value!r}: use a string or a number of hours")
    else:
        seconds = parse_duration(value)
    return float(max(1, round(seconds))) if seconds else 0.0


def _source(source_type: str, source: object, label: Callable[[str], str]) -> str:
    if source_type == "testsrc":
        return ""
    if source_type == "file":
        return _absolute_path(label("file"), source)
    return _url(label("url"), source, SOURCE_SCHEMES)


def _absolute_path(field: str, value: object) -> str:
    """Any absolute path: quotes, spaces, '$(...)' and newlines reach FFmpeg as one argv item."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"invalid {field} {value!r}: use an absolute file path")
    if "\0" in value:
        raise InvalidInput(f"invalid {field} {value!r}: a path cannot contain a NUL byte")
    if not os.path.isabs(value):
        raise InvalidInput(
            f"invalid {field} {value!r}: use an absolute file path (the CLI resolves relative ones)"
        )
    return value


def _url(field: str, value: object, schemes: tuple[str, ...]) -> str:
    """Return the URL; refuse control characters (no URL needs them) and other schemes."""
    accepted = f"a URL starting with {', '.join(s + '://' for s in schemes)}"
    if not isinstance(value, str) or "://" not in value:
        raise InvalidInput(f"invalid {field} {value!r}: use {accepted}")
    shown = mask_url(value)
    if not value.isprintable():
        raise InvalidInput(f"invalid {field} {shown!r}: a URL cannot contain control characters")
    try:
        parts = urlsplit(value)
        # A ${NAME} reference may stand for the port; it is checked once resolved.
        port = None if "${" in parts.netloc else parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise InvalidInput(f"invalid {field} {shown!r}: {exc}") from None
    if parts.scheme.lower() not in schemes or not parts.netloc:
        raise InvalidInput(f"invalid {field} {shown!r}: use {accepted}")
    if port == 0:
        raise InvalidInput(f"invalid {field} {shown!r}: port 0 is not a port to connect to")
    return value


def _output(value: object) -> str:
    extensions = either(outputs.EXTENSIONS)
    if value is None or value in outputs.WORDS:
        return str(value or "")
    if isinstance(value, str) and value.startswith("/"):
        path = _absolute_path("output", value)
        if not outputs.extension_known(path):
            raise InvalidInput(f"invalid output {value!r}: a file output must end in {extensions}")
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise InvalidInput(
                f"invalid output {value!r}: directory {parent!r} does not exist; create it first"
            )
        return path
    if isinstance(value, str) and "://" in value:
        return _url("output", value, outputs.SCHEMES)
    raise InvalidInput(
        f"invalid output {value!r}: use {', '.join(filter(None, outputs.WORDS))}, a URL "
        f"({', '.join(s + '://' for s in outputs.SCHEMES)}) "
        f"or an absolute file path ending in {extensions}"
    )


def _check_container(codec: str, audio: str, output: str) -> None:
    """Refuse up front what FFmpeg 5.1's muxers would refuse only once started."""
    row = outputs.kind_of(output)
    if codec in row.refused_codecs:
        raise InvalidInput(
            f"codec {codec} cannot go to output {mask_url(output)!r}: {row.codec_advice}"
        )
    if audio in row.refused_audio:
        raise InvalidInput(f"audio {audio} cannot go to output {output!r}: {row.audio_advice}")
