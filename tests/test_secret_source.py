"""A URL source with a secret reaches FFmpeg through a private socket, not its command line.

Fast tests for the argv and the ffconcat script; real-FFmpeg tests (e2e) for HTTP
with Basic auth and a token, SRT with a passphrase and RTMP with a stream key.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import FFMPEG, free_port, kill_tree
from streamalchemy.core.spec import StreamSpec, spec_from_request
from streamalchemy.server.inputsockets import InputSockets
from streamalchemy.supervision.ffmpeg import INPUT_PROTOCOLS, build_argv, input_script

# Its e2e tests may share the machine (scripts/test.sh runs them two at a time).
pytestmark = pytest.mark.parallel


def _spec(url: str) -> StreamSpec:
    return spec_from_request({"name": "cam", "url": url, "output": "null"})


def test_secret_source_argv_names_only_the_socket() -> None:
    spec = _spec("http://u:S3cret@h/x.ts?token=T0k")
    argv = build_argv(
        spec, ffmpeg="ffmpeg", encoder="libx264", target="null", input_socket="/r/i.sock"
    )
    assert not [a for a in argv if "S3cret" in a or "T0k" in a]
    i = argv.index("-i")
    # -re (an HTTP source is paced as before), then the concat demuxer on the socket.
    assert argv[i - 7 : i + 2] == [
        *("-re", "-f", "concat", "-safe", "0", "-protocol_whitelist", INPUT_PROTOCOLS),
        *("-i", "unix:/r/i.sock"),
    ]


def test_script_carries_the_url_and_the_same_open_options() -> None:
    spec = _spec("rtsp://u:it's@h/x")
    script = input_script(spec)
    assert script.splitlines() == [
        "ffconcat version 1.0",
        "file 'rtsp://u:it'\\''s@h/x'",
        "option rtsp_transport tcp",
        "option timeout 10000000",
    ]
    plain = build_argv(spec, ffmpeg="ffmpeg", encoder="libx264", target="null")
    assert plain[plain.index("-rtsp_transport") : plain.index("-i") + 2] == [
        "-rtsp_transport",
        "tcp",
        "-timeout",
        "10000000",
        "-i",
        "rtsp://u:it's@h/x",
    ]


# -- real FFmpeg ---------------------------------------------------------------------------


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        want = "Basic " + base64.b64encode(b"camuser:S3cretPass").decode()
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="t"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self.path.endswith("?token=T0kenSecret"):
            self.send_error(403)
            return
        self.path = self.path.split("?")[0]
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ts_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "clip.ts"
    subprocess.run(
        [
            *(FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi"),
            *("-i", "testsrc=size=160x120:rate=10:duration=4", "-c:v", "libx264", "-g", "10"),
            *("-f", "mpegts", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


@pytest.fixture
def runtime() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_through_socket(url: str, runtime: Path, secrets: tuple[str, ...]) -> int:
    """Run FFmpeg on ``url`` by the socket for 2 s of output; return the frames it read."""
    spec = _spec(url)

    async def main() -> tuple[int, str]:
        inputs = InputSockets(runtime / "inputs")
        sock = inputs.open("cam", input_script(spec))
        assert (os.stat(sock).st_mode & 0o777) == 0o600
        argv = build_argv(spec, ffmpeg=FFMPEG, encoder="libx264", target="null", input_socket=sock)
        argv[argv.index("-f", argv.index("-i")) : argv.index("-f", argv.index("-i"))] = ["-t", "2"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        await asyncio.sleep(0.5)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        inputs.close_all()
        assert not [s for s in secrets if s in cmdline], cmdline
        frames = [int(line[6:]) for line in out.decode().splitlines() if line.startswith("frame=")]
        return (frames[-1] if frames else 0), err.decode()

    frames, err = asyncio.run(main())
    assert frames > 5, err
    return frames


@pytest.mark.e2e
def test_http_source_with_basic_auth_and_token(ts_video: Path, runtime: Path) -> None:
    handler = functools.partial(_AuthHandler, directory=str(ts_video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        url = f"http://camuser:S3cretPass@127.0.0.1:{port}/clip.ts?token=T0kenSecret"
        _run_through_socket(url, runtime, ("S3cretPass", "T0kenSecret"))
    finally:
        server.shutdown()


def _listener(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            FFMPEG,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.e2e
def test_srt_source_with_passphrase(ts_video: Path, runtime: Path) -> None:
    port = free_port()
    secret = "SrtPassphrase1"
    sender = _listener(
        [
            "-i",
            str(ts_video),
            "-c",
            "copy",
            "-f",
            "mpegts",
            f"srt://127.0.0.1:{port}?mode=listener&passphrase={secret}",
        ],
    )
    try:
        _wait_udp_or_tcp(sender)
        _run_through_socket(f"srt://127.0.0.1:{port}?passphrase={secret}", runtime, (secret,))
    finally:
        kill_tree(sender)


@pytest.mark.e2e
def test_rtmp_source_with_stream_key(ts_video: Path, runtime: Path) -> None:
    port = free_port()
    key = "streamKEY123"
    sender = _listener(
        [
            "-i",
            str(ts_video),
            "-c",
            "copy",
            "-f",
            "flv",
            "-listen",
            "1",
            f"rtmp://127.0.0.1:{port}/live/{key}",
        ],
    )
    try:
        _wait_tcp(port)
        _run_through_socket(
            f"rtmp://u:RtmpPass@127.0.0.1:{port}/live/{key}", runtime, (key, "RtmpPass")
        )
    finally:
        kill_tree(sender)


def _wait_udp_or_tcp(proc: subprocess.Popen[bytes]) -> None:
    time.sleep(1.0)  # an SRT listener has no port to probe without taking its one caller
    assert proc.poll() is None


def _wait_tcp(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(
            c.laddr.port == port and c.status == "LISTEN" for c in psutil.net_connections("tcp")
        ):
            return
        time.sleep(0.05)
    pytest.fail(f"no RTMP listener on {port}")
