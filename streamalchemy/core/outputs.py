"""The output kinds, one row each: every "which kind of output is this?" is asked here.

A row says how an output is written (its muxer and FFmpeg's output arguments),
where it goes (``target``), whether it is a file that later spawns number
(rec.1.mp4), whether it is an HLS directory to clear, prune and end, which codecs
its container refuses, and how ``show`` names it. Adding an output kind is one row
here plus its tests. Pure: nothing here reads or writes a file (that is
``supervision.recordings``) or spawns anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from urllib.parse import urlsplit

# A keyframe every 2 s whatever the encoder: HLS cuts its segments there, players join quickly.
KEYFRAME_SECONDS = 2
HLS_SEGMENT = "segment_%05d.ts"
HLS_PLAYLIST = "index.m3u8"


def _push(muxer: str) -> Callable[[str], list[str]]:
    return lambda target: ["-f", muxer, target]


def _rtsp(target: str) -> list[str]:
    return ["-f", "rtsp", "-rtsp_transport", "tcp", target]


def _discard(target: str) -> list[str]:
    # Muxed into NUT (which carries every codec here) and thrown away: unlike the
    # null muxer, a real muxer counts its bytes, so the bitrate is known.
    return ["-f", "nut", "-y", "/dev/null"]


def _hls(target: str) -> list[str]:
    # No "file:" prefix here: FFmpeg 5.1 then fails to delete old segments, and an
    # absolute path is never read as a protocol anyway. append_list: a restarted
    # FFmpeg continues the playlist's numbering instead of going back to 0.
    segments = str(PurePath(target).parent / HLS_SEGMENT)
    return [
        *("-f", "hls", "-hls_time", str(KEYFRAME_SECONDS), "-hls_list_size", "6"),
        *("-hls_delete_threshold", "3"),
        *("-hls_flags", "delete_segments+omit_endlist+append_list"),
        *("-hls_segment_filename", segments, target),
    ]


def _file(muxer: str, fragmented: bool = False) -> Callable[[str], list[str]]:
    # Fragmented MP4/MOV stays playable when FFmpeg is killed before it finishes.
    fragments = ["-movflags", "+frag_keyframe+empty_moov"] if fragmented else []
    # -flush_packets 1: what was muxed is on disk, not in a 32 KiB buffer, when
    # FFmpeg is killed (a low-bitrate recording lost its first seconds otherwise).
    # -n: never overwrite (the supervisor picks a free file for each spawn);
    # file: so that a ':' in the name is never read as a protocol.
    return lambda target: ["-f", muxer, *fragments, "-flush_packets", "1", "-n", f"file:{target}"]


_FLV = "FLV (rtmp://, .flv) carries h264 only; use --codec h264 or another output"


@dataclass(frozen=True)
class OutputKind:
    """One kind of output: how a validated ``output`` string of that kind is handled."""

    kind: str  # its name in the docs and in ``show``
    muxer: str  # FFmpeg's -f
    args: Callable[[str], list[str]]  # FFmpeg's output arguments, given the target
    word: str | None = None  # the output is this word ("" is the default RTSP push)
    schemes: tuple[str, ...] = ()  # or a URL with one of these schemes
    extension: str = ""  # or an absolute file path ending in this
    is_hls: bool = False  # a directory of segments: cleared, pruned and ended
    hvc1: bool = False  # Apple players want HEVC tagged hvc1 in this container
    refused_codecs: tuple[str, ...] = ()  # video codecs the container cannot carry
    codec_advice: str = ""
    refused_audio: tuple[str, ...] = ()  # audio codecs the container cannot carry
    audio_advice: str = ""

    @property
    def is_file(self) -> bool:
        """A file: never overwritten, each later spawn writes the next numbered one."""
        return bool(self.extension)


# One row per output kind. Order matters only for the words listed in messages.
OUTPUTS: tuple[OutputKind, ...] = (
    OutputKind("default RTSP", "rtsp", _rtsp, word=""),
    OutputKind("null", "nut", _discard, word="null"),
    OutputKind("hls", "hls", _hls, word="hls", is_hls=True, hvc1=True),
    OutputKind("rtsp", "rtsp", _rtsp, schemes=("rtsp", "rtsps")),
    OutputKind(
        "rtmp",
        "flv",
        _push("flv"),
        schemes=("rtmp", "rtmps"),
        refused_codecs=("h265", "mpeg4"),
        codec_advice=_FLV,
    ),
    OutputKind("srt", "mpegts", _push("mpegts"), schemes=("srt",)),
    OutputKind("udp", "mpegts", _push("mpegts"), schemes=("udp",)),
    OutputKind("tcp", "mpegts", _push("mpegts"), schemes=("tcp",)),
    OutputKind("ts file", "mpegts", _file("mpegts"), extension=".ts"),
    OutputKind(
        "mp4 file",
        "mp4",
        _file("mp4", fragmented=True),
        extension=".mp4",
        hvc1=True,
        refused_audio=("pcm_alaw",),
        audio_advice="MP4 does not carry it; use --audio aac or a .mkv, .mov or .ts file",
    ),
    OutputKind("mkv file", "matroska", _file("matroska"), extension=".mkv"),
    OutputKind(
        "flv file",
        "flv",
        _file("flv"),
        extension=".flv",
        refused_codecs=("h265", "mpeg4"),
        codec_advice=_FLV,
    ),
    OutputKind("mov file", "mov", _file("mov", fragmented=True), extension=".mov", hvc1=True),
)

WORDS = tuple(row.word for row in OUTPUTS if row.word is not None)  # "" among them
SCHEMES = tuple(scheme for row in OUTPUTS for scheme in row.schemes)
EXTENSIONS = tuple(row.extension for row in OUTPUTS if row.extension)
_BY_WORD = {row.word: row for row in OUTPUTS if row.word is not None}
_BY_SCHEME = {scheme: row for row in OUTPUTS for scheme in row.schemes}
_BY_EXTENSION = {row.extension: row for row in OUTPUTS if row.extension}


def is_path(output: str) -> bool:
    """Whether ``output`` names a file (relative paths included, before they are resolved)."""
    return output not in _BY_WORD and "://" not in output


def extension_known(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in _BY_EXTENSION


def kind_of(output: str) -> OutputKind:
    """The row of a validated ``output`` ("" is the default RTSP push)."""
    if output in _BY_WORD:
        return _BY_WORD[output]
    if output.startswith("/"):
        return _BY_EXTENSION[os.path.splitext(output)[1].lower()]
    return _BY_SCHEME[urlsplit(output).scheme.lower()]


def target(output: str, name: str, rtsp_url: str, hls_dir: PurePath) -> str:
    """Where the stream goes, as users see it: the URL, the HLS playlist or file path, or null."""
    if output == "":
        return f"{rtsp_url.rstrip('/')}/{name}"
    if kind_of(output).is_hls:
        return str(hls_dir / name / HLS_PLAYLIST)
    return output


def shown(output: str) -> str:
    """How ``show`` names an output: the default RTSP push has no string of its own."""
    return output or OUTPUTS[0].kind
