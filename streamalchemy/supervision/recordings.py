"""What a stream leaves on disk over days: HLS directories and numbered recordings.

- HLS: a new start of a name clears the name's directory; every spawn of FFmpeg
  removes the segments its playlist no longer lists (FFmpeg deletes only the ones
  it wrote itself) and continues the playlist's numbering (``append_list``); a stop
  ends the playlist with ``#EXT-X-ENDLIST``.
- Files: nothing is ever overwritten. The first spawn writes the path given; each
  later one the next free numbered file beside it (rec.mp4, rec.1.mp4, rec.2.mp4).

Nothing here starts processes or decides about streams.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from streamalchemy.core import outputs
from streamalchemy.errors import InvalidInput

_SEGMENT = re.compile(r"segment_\d+\.ts")
ENDLIST = "#EXT-X-ENDLIST"
DISK_FULL_BYTES = 64 << 10  # free space below which an output's disk counts as full


def numbered(path: Path, n: int) -> Path:
    """rec.mp4 for 0, rec.3.mp4 for 3."""
    return path if n == 0 else path.with_name(f"{path.stem}.{n}{path.suffix}")


def next_free_file(path: Path) -> Path:
    """``path`` if it does not exist, else the numbered file after the highest one there."""
    if not path.exists():
        return path
    pattern = re.compile(re.escape(path.stem) + r"\.(\d{1,9})" + re.escape(path.suffix))
    try:
        taken = [int(m[1]) for f in path.parent.iterdir() if (m := pattern.fullmatch(f.name))]
    except OSError:
        taken = []
    n = max(taken, default=0) + 1
    while numbered(path, n).exists():
        n += 1
    return numbered(path, n)


class OldFile:
    """A ``start`` to a file that exists is refused unless ``--overwrite``; with it, the
    old file is set aside (renamed beside it, ``.NAME.overwritten``) until the new
    start is confirmed: put back if the start fails, removed once it runs.

    Only the file named goes: numbered files of earlier runs stay where they are.
    """

    def __init__(self) -> None:
        self._moved: tuple[Path, Path] | None = None

    def refuse_or_set_aside(self, output: str, overwrite: bool) -> None:
        if not outputs.kind_of(output).is_file:
            return
        path = Path(output)
        if not (path.exists() or path.is_symlink()):
            return
        if not overwrite:
            raise InvalidInput(
                f"output file {output} already exists: use --overwrite to replace it, "
                "or choose another path"
            )
        if path.is_dir():
            raise InvalidInput(f"output {output} is a directory; choose a file path")
        aside = path.with_name(f".{path.name}.overwritten")
        os.replace(path, aside)
        self._moved = (path, aside)

    def put_back(self) -> None:
        """The start failed: the old file is where it was (what FFmpeg wrote is gone)."""
        if self._moved is not None:
            path, aside = self._moved
            self._moved = None
            with contextlib.suppress(OSError):
                os.replace(aside, path)

    def drop(self) -> None:
        """The start is confirmed: the old file goes."""
        if self._moved is not None:
            _, aside = self._moved
            self._moved = None
            with contextlib.suppress(OSError):
                aside.unlink()


def hls_files(directory: Path) -> list[Path]:
    try:
        return [f for f in directory.iterdir() if _SEGMENT.fullmatch(f.name)]
    except OSError:
        return []


def clear_hls(playlist: Path) -> None:
    """Remove a name's old segments and playlist: a new start begins a new stream."""
    for f in [*hls_files(playlist.parent), playlist, playlist.with_name(playlist.name + ".tmp")]:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def listed_segments(playlist: Path) -> set[str]:
    try:
        text = playlist.read_text(errors="replace")
    except OSError:
        return set()
    return {line.strip() for line in text.splitlines() if _SEGMENT.fullmatch(line.strip())}


def prune_hls(playlist: Path) -> None:
    """Remove the segments the playlist does not list: left by an FFmpeg that was killed."""
    keep = listed_segments(playlist)
    for f in hls_files(playlist.parent):
        if f.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
    with contextlib.suppress(FileNotFoundError):
        playlist.with_name(playlist.name + ".tmp").unlink()


def hls_bitrate_kbps(playlist: Path) -> float | None:
    """kb/s of the newest segment the playlist lists, its size over its duration (FFmpeg
    counts no bytes for HLS); None until a segment is complete."""
    try:
        text = playlist.read_text(errors="replace")
    except OSError:
        return None
    seconds, newest = 0.0, None
    for line in map(str.strip, text.splitlines()):
        if line.startswith("#EXTINF:"):
            try:
                seconds = float(line.removeprefix("#EXTINF:").split(",")[0])
            except ValueError:
                seconds = 0.0
        elif _SEGMENT.fullmatch(line) and seconds > 0:
            newest = (line, seconds)
    if newest is None:
        return None
    try:
        size = (playlist.parent / newest[0]).stat().st_size
    except OSError:
        return None
    return round(size * 8 / newest[1] / 1000, 1)


def end_playlist(playlist: Path) -> None:
    """Mark the playlist ended, so players stop waiting for more (FFmpeg runs with omit_endlist)."""
    try:
        text = playlist.read_text(errors="replace")
    except OSError:
        return
    if not text.strip() or ENDLIST in text:
        return
    tmp = playlist.with_name(playlist.name + ".end")
    with contextlib.suppress(OSError):
        tmp.write_text(text.rstrip("\n") + f"\n{ENDLIST}\n")
        os.replace(tmp, playlist)


class OutputFiles:
    """The files one run of a stream writes, across every spawn of its FFmpeg."""

    def __init__(self, output: str, target: str) -> None:
        kind = outputs.kind_of(output)
        self.target = target
        self.current = target
        self.is_file = kind.is_file
        self.is_hls = kind.is_hls

    def space_left(self) -> int | None:
        """Bytes free for the files being written (None: no files, or it cannot be told)."""
        if not (self.is_file or self.is_hls):
            return None
        try:
            fs = os.statvfs(Path(self.current).parent)
        except OSError:
            return None
        return fs.f_bavail * fs.f_frsize

    def disk_full(self) -> str | None:
        """Why FFmpeg cannot write its output, when its disk is full. FFmpeg itself goes
        on encoding, reports progress and lists empty HLS segments without a word."""
        left = self.space_left()
        if left is None or left >= DISK_FULL_BYTES:
            return None
        where = Path(self.current).parent
        return f"no space left on the disk of {where} ({left // 1024} KiB free): free some"

    def begin(self) -> None:
        """A new start of the name (start, replace, restart, restore)."""
        if self.is_hls:
            with contextlib.suppress(OSError):
                Path(self.target).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            clear_hls(Path(self.target))

    def next_spawn(self) -> str:
        """Where the next FFmpeg writes; called right before each spawn."""
        if self.is_file:
            self.current = str(next_free_file(Path(self.target)))
        elif self.is_hls:
            prune_hls(Path(self.target))
        return self.current

    def bitrate_kbps(self) -> float | None:
        """The bitrate read from the files written, where FFmpeg reports none (HLS)."""
        return hls_bitrate_kbps(Path(self.target)) if self.is_hls else None

    def end(self) -> None:
        """The stream is over (stopped, or ended for good): close what players read."""
        if self.is_hls:
            end_playlist(Path(self.target))
