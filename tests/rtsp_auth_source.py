"""A real RTSP source that demands a password (Basic or Digest), for the credential tests.

FFmpeg plays a video as RTP to a UDP port; this small RTSP server answers OPTIONS,
DESCRIBE, SETUP (TCP interleaved only) and PLAY, refuses every request after
OPTIONS without the right ``Authorization`` (401), and forwards the RTP packets
to each playing client over its RTSP connection.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REALM = "streamalchemy-test"
NONCE = "4e6f6e6365"


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class RtspAuthSource:
    """``rtsp://127.0.0.1:PORT/cam`` that wants ``user``/``password`` by ``scheme``."""

    def __init__(
        self,
        video: Path,
        *,
        user: str,
        password: str,
        scheme: str = "basic",
        ffmpeg: str = "ffmpeg",
    ) -> None:
        self.user, self.password, self.scheme = user, password, scheme
        self.port = _free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.authorized = 0  # requests that carried the right credentials
        self.refused = 0  # requests answered 401
        self.playing = 0  # clients sent RTP
        self._clients: set[asyncio.StreamWriter] = set()
        self._dir = Path(tempfile.mkdtemp(prefix="sa-rtsp-"))
        rtp_port = _free_port(socket.SOCK_DGRAM)
        sdp = self._dir / "cam.sdp"
        self._ffmpeg = subprocess.Popen(
            [
                *(ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-re"),
                *("-stream_loop", "-1", "-i", str(video), "-map", "0:v:0", "-c:v", "copy"),
                *("-f", "rtp", "-sdp_file", str(sdp), f"rtp://127.0.0.1:{rtp_port}"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._main(rtp_port),), daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not (sdp.exists() and sdp.stat().st_size and self._ready.is_set()):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the RTSP test source did not start")
            time.sleep(0.05)
        self._sdp = self._described(sdp.read_text())

    @staticmethod
    def _described(sdp: str) -> str:
        lines = [line for line in sdp.splitlines() if line and not line.startswith("SDP:")]
        out = []
        for line in lines:
            if line.startswith("m=video"):
                out.append(re.sub(r"m=video \d+", "m=video 0", line))
                out.append("a=control:streamid=0")
            else:
                out.append(line)
        return "\r\n".join(out) + "\r\n"

    # -- the server ------------------------------------------------------------------

    async def _main(self, rtp_port: int) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Forward(self), local_addr=("127.0.0.1", rtp_port)
        )
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
        transport.close()
        for writer in list(self._clients):
            writer.close()

    def _authorized(self, method: str, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        if self.scheme == "basic":
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return given == f"Basic {token}"
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', given.removeprefix("Digest ")))
        if not given.startswith("Digest ") or fields.get("username") != self.user:
            return False
        ha1 = _md5(f"{self.user}:{REALM}:{self.password}")
        ha2 = _md5(f"{method}:{fields.get('uri', '')}")
        return fields.get("response") == _md5(f"{ha1}:{NONCE}:{ha2}")

    def _challenge(self) -> str:
        if self.scheme == "basic":
            return f'Basic realm="{REALM}"'
        return f'Digest realm="{REALM}", nonce="{NONCE}"'

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, url, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                cseq = headers.get("cseq", "0")
                reply = self._answer(method, url, headers)
                status, extra, body = reply
                text = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in extra.items()
                )
                text += f"Content-Length: {len(body)}\r\n\r\n{body}"
                writer.write(text.encode())
                await writer.drain()
                if method == "PLAY" and status.startswith("200"):
                    self.playing += 1
                    self._clients.add(writer)
                if method == "TEARDOWN":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def _answer(
        self, method: str, url: str, headers: dict[str, str]
    ) -> tuple[str, dict[str, str], str]:
        if method == "OPTIONS":
            return "200 OK", {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN"}, ""
        if not self._authorized(method, headers):
            self.refused += 1
            return "401 Unauthorized", {"WWW-Authenticate": self._challenge()}, ""
        self.authorized += 1
        session = {"Session": "5a5a5a5a;timeout=60"}
        if method == "DESCRIBE":
            base = {"Content-Base": self.url + "/", "Content-Type": "application/sdp"}
            return "200 OK", base, self._sdp
        if method == "SETUP":
            if "interleaved" not in headers.get("transport", ""):
                return "461 Unsupported Transport", {}, ""
            transport = {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
            return "200 OK", {**transport, **session}, ""
        if method in ("PLAY", "TEARDOWN", "GET_PARAMETER"):
            return "200 OK", session, ""
        return "405 Method Not Allowed", {}, ""

    def forward(self, packet: bytes) -> None:
        frame = b"$\x00" + len(packet).to_bytes(2, "big") + packet
        for writer in list(self._clients):
            if writer.transport.get_write_buffer_size() < (1 << 20):
                writer.write(frame)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
        if self._ffmpeg.poll() is None:
            self._ffmpeg.kill()
        self._ffmpeg.wait(10)
        for path in self._dir.iterdir():
            path.unlink()
        self._dir.rmdir()


class _Forward(asyncio.DatagramProtocol):
    def __init__(self, source: RtspAuthSource) -> None:
        self.source = source

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        self.source.forward(data)
