"""Read FFmpeg's machine-readable progress (``-progress pipe:1``) and its error lines."""

from __future__ import annotations

import re
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


def _number(text: str) -> float | None:
    match = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", text)
    return float(match.group(1)) if match else None


class ProgressParser:
    """Collects ``key=value`` lines; a ``progress=`` line closes a block."""

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}

    def feed(self, line: str) -> Progress | None:
        """Return the finished block when ``line`` ends one, else None."""
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        if key != "progress":
            self._pending[key] = value
            return None
        block, self._pending = self._pending, {}
        frames = _number(block.get("frame", ""))
        out_time = _number(block.get("out_time_us", "") or block.get("out_time_ms", ""))
        return Progress(
            frames=int(frames or 0),
            out_time_us=int(out_time or 0),
            fps=_number(block.get("fps", "")),
            bitrate_kbps=_number(block.get("bitrate", "")),
            speed=_number(block.get("speed", "")),
        )


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


def explain_failure(cause: str, target: str) -> str:
    """Turn FFmpeg's wording into what to do, for the failures users meet first."""
    url = urlsplit(target)
    if url.scheme in ("rtsp", "rtsps") and "refused" in cause.lower():
        where = f"{url.hostname}:{url.port or 554}"
        if where in cause:
            return (
                f"cannot connect to the RTSP server at {where} (connection refused): "
                "start one (e.g. MediaMTX) or use --output hls"
            )
    return cause
