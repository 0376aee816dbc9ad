"""Read FFmpeg's machine-readable progress (``-progress pipe:1``) and its error lines."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Progress:
    """The last complete progress block of one FFmpeg process."""

    frames: int = 0
    out_time_us: int = 0
    fps: float | None = None
    bitrate_kbps: float | None = None
    speed: float | None = None
    total_size: int | None = None  # bytes written to the output; None for HLS and RTSP


def _number(text: str) -> float | None:
    """``14.9``, ``1234.5kbits/s``, ``0.98x``; None for ``N/A`` and the like."""
    try:
        value = float(text.rstrip("kbits/x"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _integer(text: str) -> int | None:
    """``123456``; None for ``N/A`` (FFmpeg's word when the muxer has no byte count)."""
    return int(text) if text.isascii() and text.isdigit() else None


_PARTIAL_MAX = 1 << 16
# FFmpeg's fps and speed are averages since its start: honest once this much is out.
KNOWN_AFTER_US = 1_000_000


class ProgressParser:
    """Collects ``key=value`` lines; a ``progress=`` line closes a block.

    Fed whole chunks of the pipe rather than lines: with many streams, one read per
    stats period instead of one per line is most of the daemon's idle CPU saved.
    """

    def __init__(self) -> None:
        self._partial = b""
        self._pending: dict[str, str] = {}
        self._previous: tuple[int, int | None] | None = None  # the last block's time and size

    def feed(self, data: bytes) -> Progress | None:
        """Return the last block that ``data`` completes, if any."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > _PARTIAL_MAX:
            self._partial = b""  # not a progress line: no key=value runs this long
        done: dict[str, str] | None = None
        for line in lines:
            key, sep, value = line.decode(errors="replace").strip().partition("=")
            if not sep:
                continue
            if key == "progress":
                done, self._pending = self._pending, {}
            else:
                self._pending[key] = value
        if done is None:
            return None
        frames = int(_number(done.get("frame", "")) or 0)
        out_time = int(_number(done.get("out_time_us", "") or done.get("out_time_ms", "")) or 0)
        total_size = _integer(done.get("total_size", ""))
        before, self._previous = self._previous, (out_time, total_size)
        if frames <= 1 or out_time < KNOWN_AFTER_US:
            # The report FFmpeg makes as its output opens: its averages are over no time
            # yet (a bitrate of 4,000,000 kb/s, a speed of 0.00006x). Nothing is known.
            return Progress(frames=frames, out_time_us=out_time, total_size=total_size)
        return Progress(
            frames=frames,
            out_time_us=out_time,
            fps=_number(done.get("fps", "")),
            bitrate_kbps=None if before is None else _bitrate(before, (out_time, total_size)),
            speed=_number(done.get("speed", "")),
            total_size=total_size,
        )


def _bitrate(before: tuple[int, int | None], now: tuple[int, int | None]) -> float | None:
    """kb/s written between two reports (FFmpeg's own figure is an average since the
    start, the header included); None when the muxer counts no bytes (HLS, RTSP)."""
    (t0, size0), (t1, size1) = before, now
    if size0 is None or size1 is None or t1 <= t0 or size1 < size0:
        return None
    return round((size1 - size0) * 8 * 1000 / (t1 - t0), 1)  # bytes per us -> kb/s


_BOILERPLATE = ("Conversion failed!", "Error initializing output stream", "Exiting normally")
_ERRORISH = re.compile(
    r"error|fail|invalid|refused|not found|denied|unable|could not|no such|timed out|"
    r"unreachable|broken pipe|end of file",
    re.IGNORECASE,
)
_ADDRESS = re.compile(r"^\[([\w-]+) @ 0x[0-9a-f]+\]\s*")


def clean_line(line: str) -> str:
    """Drop the object addresses FFmpeg prefixes to its log lines."""
    return _ADDRESS.sub(r"[\1] ", line.strip())


def root_cause(lines: list[str]) -> str | None:
    """Pick the line that explains a failure: the first error-like one, FFmpeg prints it first."""
    useful = [line for line in lines if line and not line.startswith(_BOILERPLATE)]
    for line in useful:
        if _ERRORISH.search(line):
            return line
    return useful[-1] if useful else None


def name_the_source(cause: str, argv: Sequence[str], source: str) -> str:
    """``cause`` with the private socket a hidden source is read through named as the
    source it stands for (masked where it is printed): the user knows the URL, not it."""
    for item in argv:
        if item.startswith("unix:"):
            cause = cause.replace(item, source).replace(item.removeprefix("unix:"), source)
    return cause


def explain_failure(cause: str, target: str) -> str:
    """Turn FFmpeg's wording into what to do, for the failures users meet first."""
    try:
        url = urlsplit(target)
        port = url.port or 554
    except ValueError:
        return cause
    if url.scheme in ("rtsp", "rtsps") and "refused" in cause.lower():
        where = f"{url.hostname}:{port}"
        if where in cause:
            return (
                f"cannot connect to the RTSP server at {where} (connection refused): "
                "start one (e.g. MediaMTX) or use --output hls"
            )
    return cause
