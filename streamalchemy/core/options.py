"""The vocabulary of ``start``, once: every option of the command line, with its help,
default and accepted values. The request body and the apply file use the same names.

Typer's declarations (``cli`` through ``client.typerparts``) and the fast path
(``client.fastpath``) both read ``START``; the validation (``core.spec``) checks values
against the same rows. Pure data: nothing here parses a command line or checks a value.
"""

from __future__ import annotations

from dataclasses import dataclass

CODECS = ("h264", "h265", "mpeg4", "copy")
RESOLUTIONS = (480, 720, 1080, 1440, 2160)
FPS_RANGE = (1, 120)
AUDIO_CODECS = ("auto", "aac", "pcm_alaw", "none")
HWACCELS = ("none", "auto", "nvenc", "vaapi", "qsv", "videotoolbox")
RESTARTS = ("on-failure", "always", "never")
# "source": a re-encode keeps the source's size and frame rate (no scale, no fps filter).
SOURCE = "source"
# What a generated test pattern is when its size or rate is "source".
TESTSRC_RESOLUTION = 1080
TESTSRC_FPS = 30


@dataclass(frozen=True)
class StartOption:
    """One ``start`` option: ``--name VALUE`` (or ``--name`` alone for a flag)."""

    name: str
    help: str
    default: str = ""  # as shown in --help, and what a missing or null value means
    choices: tuple[str, ...] = ()  # empty: free text, checked by the validation
    metavar: str | None = None  # None: Typer's own (TEXT)
    flag: bool = False  # no value: true when given
    integer: bool = False  # a whole number, as Typer parses an int
    checked: bool = False  # the CLI refuses a bad value as the daemon would (spec.check_option)
    spec: bool = True  # a field of the stream spec (not its source, not how to start it)


# In --help's order. Adding an option is one row here, one parameter in cli.start.
START: tuple[StartOption, ...] = (
    StartOption("file", "Loop a local video file.", spec=False),
    StartOption("url", "Relay an RTSP or other network URL.", spec=False),
    StartOption("testsrc", "A synthetic test pattern.", flag=True, spec=False),
    StartOption("codec", "Video codec; copy = no re-encode.", "h264", CODECS, checked=True),
    StartOption(
        "resolution",
        f"Output height; source keeps the source's size (a test pattern is {TESTSRC_RESOLUTION}).",
        SOURCE,
        (SOURCE, *map(str, RESOLUTIONS)),
        checked=True,
    ),
    StartOption(
        "fps",
        "Frames per second, 1-120; source keeps the source's rate (a test pattern is "
        f"{TESTSRC_FPS}).",
        SOURCE,
        metavar="source|1-120",
        checked=True,
    ),
    StartOption(
        "audio",
        "The source's audio: auto keeps it (copied with --codec copy, else AAC; a test "
        "pattern has none), none drops it.",
        "auto",
        AUDIO_CODECS,
        checked=True,
    ),
    StartOption("hwaccel", "Hardware encoder.", "none", HWACCELS, checked=True),
    StartOption(
        "duration",
        "0 = unlimited; hours as a number (1.5) or 90m, 2h, 45s, 1h30m.",
        "0",
        metavar="DURATION",
        checked=True,
    ),
    StartOption(
        "output",
        "rtsp:// rtmp:// srt:// udp:// URL, hls, null or a file path.",
        "$STREAMALCHEMY_RTSP_URL/NAME",
        metavar="OUTPUT",
    ),
    StartOption("restart", "When FFmpeg dies.", "on-failure", RESTARTS, checked=True),
    StartOption("priority", "Higher is restored first.", "0", metavar="INTEGER", integer=True),
    StartOption("replace", "Replace a stream of this name.", flag=True, spec=False),
    StartOption(
        "overwrite",
        "A file output may replace an existing file at the first start.",
        "off",
        flag=True,
        spec=False,
    ),
)

BY_NAME = {option.name: option for option in START}
# The stream spec's options (after the source), as the request body and apply file name them.
START_OPTIONS = {option.name: option for option in START if option.spec}
