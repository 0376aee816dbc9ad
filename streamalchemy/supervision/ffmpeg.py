"""Turn a validated StreamSpec into an FFmpeg argv: pure, no I/O, no shell.

Every user string (path, URL, name) is exactly one argv item. FFmpeg writes
``-progress`` key=value blocks on stdout and warnings on stderr, both files that the
supervisor follows (``childfiles``); an output ``-t`` of the time left ends the
stream at its deadline even when no daemon runs.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from streamalchemy.core import outputs
from streamalchemy.core.options import TESTSRC_FPS, TESTSRC_RESOLUTION
from streamalchemy.core.outputs import KEYFRAME_SECONDS
from streamalchemy.core.spec import StreamSpec

# How long a network source may stay silent before FFmpeg gives up (and the
# supervisor restarts it), in microseconds as FFmpeg wants it.
SOURCE_TIMEOUT_US = "10000000"
# Where VAAPI encodes; the first render node, the one a single-GPU machine has.
VAAPI_DEVICE = "/dev/dri/renderD128"
# FFmpeg reports progress once as soon as its output is open, then every this many
# seconds: the period sets the daemon's idle CPU, not how fast a start is confirmed.
STATS_PERIOD = 2.0
# Bits per pixel per frame at the target size: enough for a watchable live picture.
_BITS_PER_PIXEL = {"h264": 0.08, "h265": 0.05, "mpeg4": 0.15}


def build_argv(
    spec: StreamSpec,
    *,
    ffmpeg: str,
    encoder: str,
    target: str,
    stats_period: float = STATS_PERIOD,
    input_socket: str | None = None,
    time_limit: float | None = None,
) -> list[str]:
    """The full FFmpeg command line for ``spec``, encoding with ``encoder`` to ``target``.

    With ``input_socket``, a URL source is not on the command line (where any user
    reads it in ``ps``): FFmpeg reads ``input_script(spec)`` from that Unix socket.
    ``time_limit``: the seconds the stream has left, FFmpeg's output ``-t``.
    """
    return [
        ffmpeg,
        *("-nostdin", "-hide_banner", "-loglevel", "warning", "-nostats"),
        *("-progress", "pipe:1", "-stats_period", f"{stats_period:g}"),
        *_device_args(encoder),
        *_input_args(spec, input_socket),
        *_map_args(spec),
        *_video_args(spec, encoder),
        *_audio_args(spec),
        *(("-t", f"{max(time_limit, 0.001):.3f}") if time_limit is not None else ()),
        *_output_args(spec, target),
    ]


def probe_argv(ffmpeg: str, encoder: str) -> list[str]:
    """A two-frame test encode: succeeds only when ``encoder`` works on this machine."""
    return [
        ffmpeg,
        *("-nostdin", "-hide_banner", "-loglevel", "error"),
        *_device_args(encoder),
        *("-f", "lavfi", "-i", "color=size=256x256:rate=5"),
        *("-frames:v", "2", "-vf", ",".join(_upload_filters(encoder))),
        *("-c:v", encoder, "-f", "null", "-"),
    ]


def _device_args(encoder: str) -> list[str]:
    return ["-vaapi_device", VAAPI_DEVICE] if encoder.endswith("_vaapi") else []


def _input_args(spec: StreamSpec, input_socket: str | None = None) -> list[str]:
    if spec.source_type == "file":
        # -re: play the file at its own pace, as a camera would, looping forever.
        return ["-re", "-stream_loop", "-1", "-i", spec.source]
    if spec.source_type == "testsrc":
        height, fps = spec.resolution or TESTSRC_RESOLUTION, spec.fps or TESTSRC_FPS
        video = f"testsrc2=size={_width(height)}x{height}:rate={fps}"
        args = ["-re", "-f", "lavfi", "-i", video]
        if _has_audio(spec):
            args += ["-re", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"]
        return args
    scheme = urlsplit(spec.source).scheme.lower()
    paced = ["-re"] if scheme in ("http", "https") else []
    if input_socket is not None:
        # The concat demuxer opens the URL named in the script with the same options;
        # only the protocols a URL source can use are allowed.
        return [
            *paced,
            *("-f", "concat", "-safe", "0", "-protocol_whitelist", INPUT_PROTOCOLS),
            *("-i", f"unix:{input_socket}"),
        ]
    options = [item for key, value in _url_input_options(scheme) for item in (f"-{key}", value)]
    return [*paced, *options, "-i", spec.source]


# What a URL source may use under the concat demuxer: unix (the script), then each
# source scheme and what it runs over.
INPUT_PROTOCOLS = (
    "unix,rtsp,rtsps,rtp,srtp,tcp,udp,tls,http,https,httpproxy,crypto,"
    "rtmp,rtmps,rtmpt,rtmpts,rtmpe,rtmpte,srt"
)


def input_script(spec: StreamSpec) -> str:
    """The ffconcat script that names a URL source and its options, for ``input_socket``."""
    lines = ["ffconcat version 1.0", f"file {_concat_quote(spec.source)}"]
    scheme = urlsplit(spec.source).scheme.lower()
    lines += [f"option {key} {value}" for key, value in _url_input_options(scheme)]
    return "\n".join(lines) + "\n"


def _concat_quote(text: str) -> str:
    """``text`` as one ffconcat token: single-quoted, a quote written as '\\''."""
    return "'" + text.replace("'", "'\\''") + "'"


def _url_input_options(scheme: str) -> list[tuple[str, str]]:
    """Timeouts so a dead or silent source makes FFmpeg exit instead of hanging."""
    if scheme in ("rtsp", "rtsps"):
        return [("rtsp_transport", "tcp"), ("timeout", SOURCE_TIMEOUT_US)]
    if scheme in ("http", "https"):
        # http may serve a plain file, which -re plays at its pace; live sources ignore it.
        reconnect = [("reconnect", "1"), ("reconnect_streamed", "1")]
        reconnect += [("reconnect_on_network_error", "1"), ("reconnect_delay_max", "5")]
        return [*reconnect, ("rw_timeout", SOURCE_TIMEOUT_US)]
    if scheme in ("rtmp", "rtmps"):
        # rtmp's own -timeout means "listen for a publisher"; rw_timeout is the read timeout.
        return [("rw_timeout", SOURCE_TIMEOUT_US)]
    return [("timeout", SOURCE_TIMEOUT_US)]  # srt, udp, tcp


def _has_audio(spec: StreamSpec) -> bool:
    """Whether the output carries audio: never with none; a test pattern only when asked."""
    if spec.source_type == "testsrc":
        return spec.audio not in ("none", "auto")
    return spec.audio != "none"


def _map_args(spec: StreamSpec) -> list[str]:
    args = ["-map", "0:v:0"]
    if not _has_audio(spec):
        return args
    if spec.source_type == "testsrc":
        return [*args, "-map", "1:a:0"]
    # The trailing '?' keeps a source without an audio track streaming, silently.
    return [*args, "-map", "0:a:0?"]


def _video_args(spec: StreamSpec, encoder: str) -> list[str]:
    if spec.codec == "copy":
        return ["-c:v", "copy"]
    # "source" size or rate: no filter, and the bitrate and GOP of a 1080p30 picture.
    height, fps = spec.resolution or TESTSRC_RESOLUTION, spec.fps or TESTSRC_FPS
    gop = str(KEYFRAME_SECONDS * fps)
    kbps = max(200, round(_width(height) * height * fps * _BITS_PER_PIXEL[spec.codec] / 1000))
    filters = [f"scale=-2:{height}"] if spec.resolution else []
    filters += [f"fps={fps}"] if spec.fps else []
    filters += _upload_filters(encoder)
    return [
        *("-vf", ",".join(filters)),
        *("-c:v", encoder, *_encoder_options(encoder)),
        *("-g", gop, "-keyint_min", gop, "-bf", "0"),
        *("-force_key_frames", f"expr:gte(t,n_forced*{KEYFRAME_SECONDS})"),
        *("-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{2 * kbps}k"),
    ]


def _upload_filters(encoder: str) -> list[str]:
    """Pixel format for the encoder, and the upload into GPU memory that VAAPI needs."""
    if encoder.endswith("_vaapi"):
        return ["format=nv12", "hwupload"]
    if encoder.endswith("_qsv"):
        return ["format=nv12"]
    return ["format=yuv420p"]


def _encoder_options(encoder: str) -> list[str]:
    """Low-latency settings per encoder family."""
    if encoder == "libx264":
        return ["-preset", "veryfast", "-tune", "zerolatency", "-sc_threshold", "0"]
    if encoder == "libx265":
        quiet = "log-level=error:scenecut=0"
        return ["-preset", "veryfast", "-tune", "zerolatency", "-x265-params", quiet]
    if encoder == "mpeg4":
        return ["-sc_threshold", "0"]
    if encoder.endswith("_nvenc"):
        return ["-preset", "p2", "-tune", "ll", "-zerolatency", "1"]
    if encoder.endswith("_qsv"):
        return ["-preset", "veryfast"]
    if encoder.endswith("_videotoolbox"):
        return ["-realtime", "1"]
    return []  # vaapi: bitrate and GOP below are all it takes


def _audio_args(spec: StreamSpec) -> list[str]:
    if not _has_audio(spec):
        return ["-an"]
    if spec.audio == "auto" and spec.codec == "copy":
        return ["-c:a", "copy"]
    if spec.audio in ("aac", "auto"):
        return ["-c:a", "aac", "-b:a", "128k", "-ac", "2"]
    return ["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"]


def _output_args(spec: StreamSpec, target: str) -> list[str]:
    row = outputs.kind_of(spec.output)
    if spec.codec == "h265" and row.hvc1:
        # Apple players want HEVC tagged hvc1 (FFmpeg defaults to hev1).
        return ["-tag:v", "hvc1", *row.args(target)]
    return row.args(target)


def _width(height: int) -> int:
    """The even 16:9 width for ``height`` (854 for 480)."""
    return (height * 16 // 9 + 1) // 2 * 2
