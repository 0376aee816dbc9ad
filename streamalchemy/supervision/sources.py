"""Check a stream's source before it starts, so that a bad file fails the ``start`` itself.

Only file sources are checked: a URL that is down now may be up in a minute, and
keeping it retried is the supervisor's business.
"""

from __future__ import annotations

import os
import stat
import subprocess

from streamalchemy.core.spec import StreamSpec
from streamalchemy.errors import InvalidInput, OperationFailed


def check_source(spec: StreamSpec, ffprobe: str, timeout: float = 10.0) -> None:
    """Raise InvalidInput (missing, not a file, no video) or OperationFailed (unreadable)."""
    if check_file(spec):
        _probe_video(spec.source, ffprobe, timeout)


def check_file(spec: StreamSpec) -> bool:
    """The quick part of ``check_source`` (no probe): raise as it does for a file that is
    missing, not a regular file or unreadable. Return whether there is a file to probe."""
    if spec.source_type != "file":
        return False
    path = spec.source
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InvalidInput(f"source file not found: {path!r}") from None
    except OSError as exc:
        raise OperationFailed(f"cannot read source file {path!r}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"source is not a regular file: {path!r}; give a video file")
    if not os.access(path, os.R_OK):
        raise OperationFailed(
            f"cannot read source file {path!r}: permission denied; check its permissions"
        )
    return True


def _probe_video(path: str, ffprobe: str, timeout: float) -> None:
    # The path is absolute, so it starts with '/' and cannot be read as an option.
    argv = [ffprobe, "-v", "error", "-select_streams", "v:0"]
    argv += ["-show_entries", "stream=codec_type", "-of", "csv=p=0", path]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise OperationFailed(
            f"ffprobe not found ({ffprobe!r}): install FFmpeg (apt install ffmpeg, "
            "brew install ffmpeg) or set STREAMALCHEMY_FFPROBE"
        ) from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"ffprobe took over {timeout:g}s to read {path!r}") from None
    if "video" not in done.stdout.split():
        errors = done.stderr.replace(path, "").strip().splitlines()
        why = errors[-1].strip(": ") if errors else "no video stream"
        raise InvalidInput(f"source file {path!r} is not a playable video: {why}")
