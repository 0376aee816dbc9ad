"""Turn a validated StreamSpec into an FFmpeg argv: pure, no I/O, no shell.

Every user string (path, URL, name) is exactly one argv item. FFmpeg writes
``-progress`` key=value blocks on stdout and warnings on stderr, both files that the
supervisor follows (``childfiles``); an output ``-t`` of the time left ends the
stream at its deadline even when no daemon runs.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from streamalchemy.core.spec import TESTSRC_FPS, TESTSRC_RESOLUTION, StreamSpec, output_muxer
from streamalchemy.supervision.recordings import HLS_SEGMENT

# How long a network source may stay silent before FFmpeg gives up (and the
# supervisor restarts it), in microseconds as FFmpeg wants it.
SOURCE_TIMEOUT_US = "10000000"
# Where VAAPI encodes; the first render node, the one a single-GPU machine has.
VAAPI_DEVICE = "/dev/dri/renderD128"
KEYFRAME_SECONDS = 2
# FFmpeg reports progress once as soon as its output is open, then every this many
# seconds: the period sets the daemon's idle CPU, not how fast a start is confirmed.
STATS_PERIOD = 2.0
# Bits per pixel per frame at the target size: enough for a watchable live picture.
_BITS_PER_PIXEL = {"h264": 0.08, "h265": 0.05, "mpeg4": 0.15}


def output_target(spec: StreamSpec, rtsp_url: str, hls_dir: Path) -> str:
    """Where the stream goes, as users see it: the URL, the HLS playlist or file path, or null."""
    if spec.output == "":
        return f"{rtsp_url.rstrip('/')}/{spec.name}"
    if spec.output == "hls":
        return str(hls_dir / spec.name / "index.m3u8")
    return spec.output


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
        # A keyframe every 2 s whatever the encoder, so players and HLS can join quickly.
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
    muxer = output_muxer(spec.output)
    if muxer == "null":
        # Muxed into NUT (which carries every codec here) and thrown away: unlike the
        # null muxer, a real muxer counts its bytes, so the bitrate is known.
        return ["-f", "nut", "-y", "/dev/null"]
    if spec.codec == "h265" and muxer in ("hls", "mp4", "mov"):
        # Apple players want HEVC tagged hvc1 (FFmpeg defaults to hev1).
        return ["-tag:v", "hvc1", *_container_args(muxer, target)]
    return _container_args(muxer, target)


def _container_args(muxer: str, target: str) -> list[str]:
    if muxer == "hls":
        # No "file:" prefix here: FFmpeg 5.1 then fails to delete old segments, and an
        # absolute path is never read as a protocol anyway. append_list: a restarted
        # FFmpeg continues the playlist's numbering instead of going back to 0.
        segments = str(Path(target).parent / HLS_SEGMENT)
        return [
            *("-f", "hls", "-hls_time", str(KEYFRAME_SECONDS), "-hls_list_size", "6"),
            *("-hls_delete_threshold", "3"),
            *("-hls_flags", "delete_segments+omit_endlist+append_list"),
            *("-hls_segment_filename", segments, target),
        ]
    if muxer == "rtsp":
        return ["-f", "rtsp", "-rtsp_transport", "tcp", target]
    if target.startswith("/"):
        # Fragmented MP4/MOV stays playable when FFmpeg is killed before it finishes.
        fragments = ["-movflags", "+frag_keyframe+empty_moov"] if muxer in ("mp4", "mov") else []
        # -flush_packets 1: what was muxed is on disk, not in a 32 KiB buffer, when
        # FFmpeg is killed (a low-bitrate recording lost its first seconds otherwise).
        # -n: never overwrite (the supervisor picks a free file for each spawn);
        # file: so that a ':' in the name is never read as a protocol.
        return ["-f", muxer, *fragments, "-flush_packets", "1", "-n", f"file:{target}"]
    return ["-f", muxer, target]  # flv for rtmp, mpegts for srt/udp/tcp


def _width(height: int) -> int:
    """The even 16:9 width for ``height`` (854 for 480)."""
    return (height * 16 // 9 + 1) // 2 * 2
