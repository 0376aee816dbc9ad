"""The argv build_argv makes, run by real FFmpeg: every source x codec x output, hostile names."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import FFMPEG, FFPROBE, RtspReceiver, free_port, kill_tree, wait_for
from streamalchemy.core.spec import StreamSpec, spec_from_request
from streamalchemy.supervision import ffmpeg
from streamalchemy.supervision.ffmpeg import build_argv
from streamalchemy.supervision.sources import check_source

# Its e2e tests may share the machine (scripts/test.sh runs them two at a time).
pytestmark = pytest.mark.parallel

SMALL = {"resolution": 480, "fps": 10}


class Run:
    """One FFmpeg started from an argv; counts the frames its -progress reports."""

    def __init__(self, argv: list[str], cwd: Path | None = None) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.frames = 0
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=cwd,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            if key == "frame" and value.isdigit():
                self.frames = int(value)

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> int:
        """SIGINT, as a user's Ctrl-C: FFmpeg finishes its output; killed if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        kill_tree(self.proc)
        self.stderr.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(argv: list[str], cwd: Path | None = None) -> Iterator[Run]:
    run = Run(argv, cwd)
    try:
        yield run
    finally:
        run.stop()


def video_streams(path: str | Path) -> list[str]:
    argv = [FFPROBE, "-v", "error", "-select_streams", "v", "-of", "csv=p=0"]
    argv += ["-show_entries", "stream=codec_name", str(path)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=20,
    )
    return done.stdout.split()


def argv_for(spec: StreamSpec, target: str) -> list[str]:
    encoder = {"h264": "libx264", "h265": "libx265"}.get(spec.codec, spec.codec)
    return build_argv(spec, ffmpeg=FFMPEG, encoder=encoder, target=target, stats_period=0.2)


def stream_until(argv: list[str], produced: Callable[[Run], bool], what: str) -> None:
    """Run ``argv`` until ``produced`` holds, then stop it; FFmpeg must not warn."""
    with running(argv) as run:
        deadline = time.monotonic() + 30
        while not produced(run):
            assert run.proc.poll() is None, f"FFmpeg exited {run.proc.returncode}: {run.errors()}"
            assert time.monotonic() < deadline, f"no {what} within 30 s: {run.errors()}"
            time.sleep(0.1)
        errors = run.errors()
    assert not errors.strip(), f"FFmpeg warned while waiting for {what}: {errors}"


def check_output(spec: StreamSpec, tmp: Path) -> None:
    """Stream ``spec`` to its output and prove a viewer gets video."""
    hls_dir = tmp / "hls"
    if spec.output == "":
        receiver = RtspReceiver(path=spec.name)
        try:
            target = spec.target(f"rtsp://127.0.0.1:{receiver.port}", hls_dir)
            assert target == receiver.url
            stream_until(argv_for(spec, target), lambda _: receiver.frames > 0, "RTSP frames")
        finally:
            receiver.stop()
        return
    target = spec.target("rtsp://unused", hls_dir)
    out = Path(target)
    if spec.output == "null":
        stream_until(argv_for(spec, target), lambda run: run.frames > 0, "frames")
    elif spec.output == "hls":
        out.parent.mkdir(parents=True)  # the supervisor's job
        listed = lambda _: out.exists() and ".ts" in out.read_text()  # noqa: E731
        stream_until(argv_for(spec, target), listed, "an HLS segment")
        # A live playlist has no end, so ffprobe would wait for more: probe a segment.
        segment = next(s for s in out.read_text().splitlines() if s and not s.startswith("#"))
        assert video_streams(out.parent / segment), out.read_text()
    else:
        stream_until(argv_for(spec, target), lambda run: run.frames >= 5, "frames")
        assert video_streams(out)  # stopped by SIGINT: FFmpeg flushed the file


COMBOS = [("file", c) for c in ("h264", "h265", "mpeg4", "copy")]
COMBOS += [("testsrc", c) for c in ("h264", "h265", "mpeg4")]


@pytest.mark.e2e
@pytest.mark.parametrize(("source", "codec"), COMBOS)
def test_every_output_gets_video(
    source: str, codec: str, sample_video: Path, tmp_path: Path
) -> None:
    """One source and codec to null, HLS, a .ts file and RTSP at once (2 cores, small pictures)."""
    body: dict[str, Any] = {"name": f"{source}-{codec}", "codec": codec, "audio": "aac"}
    body |= {"file": str(sample_video)} if source == "file" else {"testsrc": True}
    body |= {} if codec == "copy" else SMALL
    outputs = {"null": "null", "hls": "hls", "ts": str(tmp_path / "out.ts"), "rtsp": None}

    def one(kind: str) -> None:
        (tmp_path / kind).mkdir()
        check_output(spec_from_request({**body, "output": outputs[kind]}), tmp_path / kind)

    with ThreadPoolExecutor(len(outputs)) as pool:
        for future in [pool.submit(one, kind) for kind in outputs]:
            future.result()


HOSTILE = [
    'it\'s "quoted".mp4',
    "$(touch MARKER).mp4",
    "`touch MARKER`.mp4",
    "a; touch MARKER; b.mp4",
    "with  spaces .mp4",
    "new\nline.mp4",
    "-i",
    "-y.mp4",
    "ünïcødé 视频.mp4",
    "a:b|c&d>e.mp4",
    "100%d.mp4",
]


@pytest.mark.e2e
def test_hostile_paths_reach_ffmpeg_as_one_argv_item(sample_video: Path, tmp_path: Path) -> None:
    """Shell syntax, quotes, newlines and option-like names are only ever file names."""
    media = tmp_path / "media"
    media.mkdir()

    def one(name: str) -> None:
        source = media / name
        shutil.copy(sample_video, source)
        out = media / (name.removesuffix(".mp4") + ".out.ts")
        spec = spec_from_request(
            {"name": "hostile", "file": str(source), "output": str(out), **SMALL}
        )
        check_source(spec, FFPROBE)
        target = spec.target("rtsp://unused", tmp_path)
        argv = build_argv(spec, ffmpeg=FFMPEG, encoder="libx264", target=target)
        assert argv.count(str(source)) == 1
        assert argv[argv.index(str(source)) - 1] == "-i"
        assert argv[-1] == f"file:{out}"
        with running(argv, cwd=tmp_path) as run:
            wait_for(lambda: run.frames >= 5 or run.proc.poll() is not None, 30, "frames")
            assert run.frames >= 5, run.errors()
        assert video_streams(out), name

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(one, name) for name in HOSTILE]:
            future.result()
    assert not list(tmp_path.rglob("MARKER*")), "a shell ran part of a file name"
    assert sorted(p.name for p in media.iterdir()) == sorted(
        [*HOSTILE, *(n.removesuffix(".mp4") + ".out.ts" for n in HOSTILE)]
    )


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.e2e
def test_http_url_source_with_reconnect_options(sample_video: Path) -> None:
    """A URL source's input options are ones this FFmpeg accepts: the stream plays."""
    handler = partial(_Quiet, directory=str(sample_video.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{sample_video.name}"
        spec = spec_from_request({"name": "web", "url": url, "codec": "copy", "output": "null"})
        argv = argv_for(spec, "null")
        assert argv[argv.index("-i") - 2 : argv.index("-i") + 2] == [
            "-rw_timeout",
            ffmpeg.SOURCE_TIMEOUT_US,
            "-i",
            url,
        ]
        stream_until(argv, lambda run: run.frames > 0, "frames from the http source")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.e2e
@pytest.mark.parametrize("scheme", ["rtsp", "rtmp", "http", "srt", "udp", "tcp"])
def test_silent_url_source_makes_ffmpeg_exit(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that accepts the connection and then says nothing must not hang FFmpeg."""
    monkeypatch.setattr(ffmpeg, "SOURCE_TIMEOUT_US", "1000000")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1] if scheme not in ("srt", "udp") else free_port()
        url = (
            f"{scheme}://127.0.0.1:{port}/live/x" if scheme != "udp" else f"udp://127.0.0.1:{port}"
        )
        spec = spec_from_request({"name": "dead", "url": url, "output": "null", **SMALL})
        with running(argv_for(spec, "null")) as run:
            try:
                code = run.proc.wait(20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"FFmpeg still waits on a silent {scheme} source after 20 s")
            errors = run.errors()
    assert code != 0
    assert "Unrecognized option" not in errors and "Option not found" not in errors, errors


def argv_text(body: dict[str, Any], encoder: str = "libx264", target: str = "") -> str:
    spec = spec_from_request({"name": "cam", **body})
    target = target or spec.target("rtsp://h:8554", Path("/srv/hls"))
    return " ".join(build_argv(spec, ffmpeg="ffmpeg", encoder=encoder, target=target))


def test_argv_for_a_live_testsrc_to_the_default_rtsp_server() -> None:
    argv = argv_text({"testsrc": True, "fps": 25, "audio": "aac"})
    assert argv.startswith(
        "ffmpeg -nostdin -hide_banner -loglevel warning -nostats -progress pipe:1 -stats_period 2 "
    )
    assert "-re -f lavfi -i testsrc2=size=1920x1080:rate=25 -re -f lavfi -i sine=" in argv
    assert "-map 0:v:0 -map 1:a:0 " in argv
    # A test pattern is made at its size and rate: no scale filter; the fps asked is kept.
    assert "-vf fps=25,format=yuv420p -c:v libx264 -preset veryfast" in argv
    assert "-tune zerolatency" in argv
    assert "-g 50 -keyint_min 50 -bf 0 -force_key_frames expr:gte(t,n_forced*2)" in argv
    assert "-b:v 4147k -maxrate 4147k -bufsize 8294k" in argv
    assert "-c:a aac -b:a 128k -ac 2" in argv
    assert argv.endswith("-f rtsp -rtsp_transport tcp rtsp://h:8554/cam")


def test_bitrate_grows_with_resolution_and_fps() -> None:
    def kbps(resolution: int, fps: int) -> int:
        argv = argv_text({"testsrc": True, "resolution": resolution, "fps": fps})
        return int(argv.split("-b:v ")[1].split("k")[0])

    assert kbps(480, 15) < kbps(720, 15) < kbps(1080, 15) < kbps(2160, 15) < kbps(2160, 30)


def test_copy_maps_video_and_optional_audio_without_filters() -> None:
    argv = argv_text({"file": "/v/a.mp4", "codec": "copy", "audio": "pcm_alaw"}, encoder="copy")
    assert "-re -stream_loop -1 -i /v/a.mp4 -map 0:v:0 -map 0:a:0? -c:v copy " in argv
    assert "-vf" not in argv and "-b:v" not in argv
    assert "-c:a pcm_alaw -ar 8000 -ac 1" in argv


def test_audio_auto_keeps_the_sources_audio_copied_or_in_aac() -> None:
    copied = argv_text({"file": "/v/a.mp4", "codec": "copy"}, encoder="copy")
    assert "-map 0:v:0 -map 0:a:0? -c:v copy -c:a copy " in copied
    encoded = argv_text({"url": "rtsp://cam/x"})
    assert "-map 0:v:0 -map 0:a:0? -vf" in encoded and "-c:a aac -b:a 128k -ac 2" in encoded
    pattern = argv_text({"testsrc": True})
    assert "sine=" not in pattern and "-map 1" not in pattern and " -an " in pattern


def test_no_audio_and_a_file_output() -> None:
    argv = argv_text({"file": "/v/a.mp4", "output": "/tmp/rec.mp4", "audio": "none"})
    assert "-map 0:v:0 -vf" in argv and " -an " in argv
    assert argv.endswith(
        "-f mp4 -movflags +frag_keyframe+empty_moov -flush_packets 1 -n file:/tmp/rec.mp4"
    )


@pytest.mark.parametrize(
    ("output", "tail"),
    [
        ("null", "-f nut -y /dev/null"),
        ("rtmp://h/live/k", "-f flv rtmp://h/live/k"),
        ("srt://h:9000?streamid=x", "-f mpegts srt://h:9000?streamid=x"),
        ("udp://239.0.0.1:1234", "-f mpegts udp://239.0.0.1:1234"),
        ("rtsps://h/x", "-f rtsp -rtsp_transport tcp rtsps://h/x"),
        (
            "hls",
            "-f hls -hls_time 2 -hls_list_size 6 -hls_delete_threshold 3 "
            "-hls_flags delete_segments+omit_endlist+append_list "
            "-hls_segment_filename /srv/hls/cam/segment_%05d.ts /srv/hls/cam/index.m3u8",
        ),
        ("/tmp/x.ts", "-f mpegts -flush_packets 1 -n file:/tmp/x.ts"),
        ("/tmp/x.mkv", "-f matroska -flush_packets 1 -n file:/tmp/x.mkv"),
    ],
)
def test_output_formats(output: str, tail: str) -> None:
    assert argv_text({"testsrc": True, "output": output}).endswith(" " + tail)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("rtsp://cam/s", "-rtsp_transport tcp -timeout 10000000 -i rtsp://cam/s"),
        ("rtmp://h/app/k", "-rw_timeout 10000000 -i rtmp://h/app/k"),
        ("srt://h:9000", "-timeout 10000000 -i srt://h:9000"),
        ("udp://@:1234", "-timeout 10000000 -i udp://@:1234"),
        ("https://h/live.m3u8", "-reconnect_delay_max 5 -rw_timeout 10000000 -i https://h/l"),
    ],
)
def test_url_sources_get_a_timeout(url: str, options: str) -> None:
    argv = argv_text({"url": url})
    assert options.replace("https://h/l", url) in argv
    assert " -re " not in argv or url.startswith("https")
    assert "-stream_loop" not in argv


def test_output_target_is_what_a_user_opens() -> None:
    def target(output: str) -> str:
        spec = spec_from_request({"name": "cam", "testsrc": True, "output": output})
        return spec.target("rtsp://127.0.0.1:8554/", Path("/d/hls"))

    assert target("") == "rtsp://127.0.0.1:8554/cam"
    assert target("hls") == "/d/hls/cam/index.m3u8"
    assert target("null") == "null"
    assert target("srt://h:9000") == "srt://h:9000"
    assert target("/tmp/x.ts") == "/tmp/x.ts"


def test_vaapi_uploads_frames_to_its_device() -> None:
    argv = argv_text({"testsrc": True, "codec": "h265", "hwaccel": "vaapi"}, "hevc_vaapi")
    assert " -vaapi_device /dev/dri/renderD128 -re -f lavfi" in argv
    assert "-vf format=nv12,hwupload -c:v hevc_vaapi -g 60" in argv


def test_source_size_and_rate_by_default_and_a_1080p30_test_pattern() -> None:
    argv = argv_text({"file": "/v/a.mp4"})
    assert "-vf format=yuv420p -c:v libx264" in argv  # no scale, no fps filter
    assert "testsrc2=size=1920x1080:rate=30" in argv_text({"testsrc": True})
    sized = argv_text({"file": "/v/a.mp4", "resolution": "720", "fps": "25"})
    assert "-vf scale=-2:720,fps=25,format=yuv420p" in sized


def test_h265_is_tagged_hvc1_for_apple_players() -> None:
    for output in ("hls", "/tmp/x.mp4", "/tmp/x.mov"):
        assert "-tag:v hvc1" in argv_text({"testsrc": True, "codec": "h265", "output": output})
    assert "-tag:v hvc1" not in argv_text({"testsrc": True, "codec": "h265"})


HARDWARE = ["h264_nvenc", "hevc_nvenc", "h264_qsv", "hevc_qsv", "h264_vaapi", "hevc_vaapi"]
HARDWARE += ["h264_videotoolbox", "hevc_videotoolbox"]


@pytest.mark.parametrize("encoder", HARDWARE)
def test_hardware_options_exist_in_this_ffmpeg(encoder: str) -> None:
    """No GPU here: at least the private options we pass are ones the encoder has."""
    help_text = subprocess.run(
        [FFMPEG, "-hide_banner", "-h", f"encoder={encoder}"],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    if "is not recognized" in help_text or not help_text.strip():
        pytest.skip(f"this FFmpeg has no {encoder}")
    codec = "h265" if encoder.startswith("hevc") else "h264"
    spec = spec_from_request({"name": "cam", "testsrc": True, "codec": codec})
    argv = build_argv(spec, ffmpeg="ffmpeg", encoder=encoder, target="null")
    private = argv[argv.index(encoder) + 1 : argv.index("-g")]
    for option, value in zip(private[::2], private[1::2], strict=True):
        assert f"\n  {option} " in help_text, f"{encoder} has no {option}"
        if not value.isdigit():
            assert f"\n     {value} " in help_text, f"{encoder} {option} has no value {value}"
