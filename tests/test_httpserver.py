"""The HTTP server's limits (431, 413, 408, 411) and the masking of every JSON reply."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamalchemy.server import httpserver


async def _handle(method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> Any:
    return 200, {
        "success": True,
        "path": path,
        "body": body,
        "source": "rtsp://camuser:S3cretPass@h/x?token=T0kenSecret",
        "nested": [{"output": "rtmp://pubuser:PubPass@h/live/streamKEY123"}],
    }


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(httpserver, "_DRAIN_AFTER_ERROR", 0.2)
    limits = dataclasses.replace(httpserver.CONTROL, request_timeout=0.5)
    path = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp")) / "s.sock"
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        srv = await asyncio.start_unix_server(
            httpserver.connection_handler(_handle, limits), path=str(path)
        )
        ready.set()
        async with srv:
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    yield path
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)
    path.unlink(missing_ok=True)
    path.parent.rmdir()


def _exchange(path: Path, data: bytes, *, then_send: bytes = b"", repeat: int = 0) -> bytes:
    """Send ``data``, then ``then_send`` ``repeat`` times while it is read; return the reply."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        for _ in range(repeat):
            try:
                sock.sendall(then_send)
            except OSError:
                break  # the server answered and closed: stop flooding
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_json_reply_is_masked(server: Path) -> None:
    reply = _exchange(server, b"GET /x HTTP/1.1\r\nHost: l\r\n\r\n")
    assert _status(reply) == 200
    for secret in (b"S3cretPass", b"T0kenSecret", b"PubPass", b"streamKEY123", b"camuser"):
        assert secret not in reply
    assert b"rtmp://***:***@h/live/***" in reply


def test_body_is_read_with_content_length(server: Path) -> None:
    body = b'{"name": "a"}'
    head = f"POST /s HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    reply = _exchange(server, head + body)
    assert _status(reply) == 200 and b'"name": "a"' in reply


def test_header_line_too_long_is_431(server: Path) -> None:
    reply = _exchange(server, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert _status(reply) == 431


def test_too_many_headers_is_431(server: Path) -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"
    assert _status(_exchange(server, head)) == 431


def test_endless_headers_are_431_and_the_connection_closes(server: Path) -> None:
    flood = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
    reply = _exchange(server, b"GET / HTTP/1.1\r\n", then_send=flood, repeat=500)
    assert _status(reply) == 431


def test_body_too_large_is_413(server: Path) -> None:
    head = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (httpserver.MAX_BODY + 1)
    assert _status(_exchange(server, head)) == 413


def test_request_not_sent_in_time_is_408(server: Path) -> None:
    assert _status(_exchange(server, b"GET / HTTP/1.1\r\nHost: l\r\n")) == 408


def test_malformed_requests_are_400_or_411(server: Path) -> None:
    assert _status(_exchange(server, b"NONSENSE\r\n\r\n")) == 400
    assert _status(_exchange(server, b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n")) == 400
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _status(_exchange(server, chunked)) == 411
    body = b"[1, 2]"
    head = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert _status(_exchange(server, head + body)) == 400


def _post(body: bytes, path: str = "/s") -> bytes:
    return b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)


def test_json_nested_too_deep_is_400_not_a_silent_close(server: Path) -> None:
    for depth in (httpserver.MAX_DEPTH + 1, 2000):
        reply = _exchange(server, _post(b'{"a": ' + b"[" * depth + b"]" * depth + b"}"))
        assert _status(reply) == 400 and b"nested deeper" in reply


def test_a_string_past_the_limit_is_400_before_anything_reads_it(server: Path) -> None:
    url = "rtsp://" + "a" * (128 << 10)
    reply = _exchange(server, _post(b'{"url": "%s"}' % url.encode()))
    assert _status(reply) == 400 and b"longer than" in reply and b"aaaa" not in reply


def test_a_long_target_is_414_and_no_error_repeats_the_request(server: Path) -> None:
    reply = _exchange(server, b"GET /" + b"x" * 5000 + b" HTTP/1.1\r\n\r\n")
    assert _status(reply) == 414 and b"xxxx" not in reply
    reply = _exchange(server, b"GET / HTTP/1.1\r\nno-colon-here-SECRETish\r\n\r\n")
    assert _status(reply) == 400 and b"SECRETish" not in reply
    reply = _exchange(server, b"GET\x01EVIL / HTTP/1.1\r\n\r\n")
    assert _status(reply) == 400 and b"EVIL" not in reply


def _serve_once(limits: httpserver.Limits, handle: Any = _handle) -> tuple[Any, int]:
    """A TCP listener on a free port in a thread: (stop, port)."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        srv = await asyncio.start_server(
            httpserver.connection_handler(handle, limits), "127.0.0.1", 0
        )
        ready.append(srv.sockets[0].getsockname()[1])
        started.set()
        async with srv:
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(5)

    def end() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)

    return end, ready[0]


def _tcp(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def test_past_the_connection_cap_a_peer_gets_503_at_once() -> None:
    end, port = _serve_once(httpserver.Limits(0, 3, 5.0, check_uid=False))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.2)  # the three are accepted and hold their slots
        assert _status(_tcp(port, b"")) == 503
    finally:
        for sock in idle:
            sock.close()
        end()


def test_a_listener_without_bodies_refuses_one_unread(caplog: pytest.LogCaptureFixture) -> None:
    end, port = _serve_once(httpserver.Limits(0, 3, 5.0, check_uid=False))
    try:
        reply = _tcp(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")
        assert _status(reply) == 413
        assert _status(_tcp(port, b"GET /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")) == 411
    finally:
        end()


def test_a_peer_that_never_reads_is_cut_off_and_a_vanished_one_costs_no_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(httpserver, "WRITE_TIMEOUT", 0.3)
    big = httpserver.Text(b"x" * (16 << 20), "text/plain")

    async def large(method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> Any:
        return 200, big

    end, port = _serve_once(httpserver.Limits(0, 1, 5.0, check_uid=False), large)
    try:
        with caplog.at_level(logging.DEBUG, logger="streamalchemy"):
            stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(b"GET /m HTTP/1.1\r\n\r\n")  # and never reads the 16 MiB
            vanished = socket.create_connection(("127.0.0.1", port), timeout=5)
            vanished.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            vanished.close()  # a reset: gone before it asked
            # The one slot frees once the stalled peer is cut off: a new peer is answered.
            deadline = time.monotonic() + 10
            while (reply := _tcp(port, b"GET /m HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 503"):
                assert time.monotonic() < deadline, "the stalled peer kept its slot"
                time.sleep(0.1)
            assert _status(reply) == 200 and len(reply) > 16 << 20
            stalled.close()
    finally:
        end()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
