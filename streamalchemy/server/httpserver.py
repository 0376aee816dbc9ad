"""A small HTTP/1.1 JSON server: the control socket and the metrics TCP listener.

Just enough HTTP for the CLI, ``curl --unix-socket`` and a Prometheus scrape: one
request per connection, bodies by Content-Length, JSON both ways. Nothing a peer
sends may stall the daemon: every read is bounded (request line, header count,
head size, body size, the length and nesting of every JSON value, time to send
the request), every write has a deadline, a listener holds at most a fixed number
of connections (so the daemon always keeps file descriptors for FFmpeg), and no
error reply repeats what the peer sent. Every JSON reply goes out through
``mask_document``, so no reply carries a secret. Routing is not done here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from streamalchemy.core.masking import mask_document

log = logging.getLogger("streamalchemy.http")


@dataclass(frozen=True)
class Text:
    """A body that is not JSON (the metrics exposition), with its Content-Type."""

    body: bytes
    content_type: str


Reply = tuple[int, dict[str, Any]]
TextReply = tuple[int, Text]
Handler = Callable[[str, str, dict[str, str], dict[str, Any]], Awaitable[Reply | TextReply]]
Request = tuple[str, str, dict[str, str], dict[str, Any]]

MAX_LINE = 8 << 10  # the request line and each header line (431 past it)
MAX_TARGET = 2 << 10  # the path and query of the request line (414 past it)
MAX_HEADERS = 100  # header lines (431 past it)
MAX_HEAD = 32 << 10  # request line and headers together (431 past it)
MAX_BODY = 1 << 20  # Content-Length (413 past it)
MAX_STRING = 4 << 10  # characters of any string or key of a JSON body (400 past it)
MAX_DEPTH = 16  # nesting of arrays and objects in a JSON body (400 past it)
REQUEST_TIMEOUT = 10.0  # seconds to send the whole request (408 past it)
WRITE_TIMEOUT = 10.0  # seconds a peer has to take the whole reply before it is cut off
_DRAIN_AFTER_ERROR = 1.0  # seconds spent discarding what a refused client still sends,
_DRAIN_BYTES = 1 << 20  # and bytes at most
_METHOD = re.compile(r"[A-Z]{1,16}")


BACKLOG = 512  # connections that may wait in the kernel, e.g. while the daemon restarts


@dataclass(frozen=True)
class Limits:
    """What one listener allows a peer: its body, its connections, its time."""

    max_body: int  # 0: no body is read at all (a request that has one is refused)
    max_connections: int  # past it a new peer gets 503 at once and is closed
    request_timeout: float
    check_uid: bool  # a Unix-socket peer must be our own uid (or root)
    # How many connections asyncio accepts at one go: past the cap, each holds a
    # descriptor until it is refused. (The kernel's queue is ``BACKLOG`` for all.)
    accept_batch: int = BACKLOG


# The control socket: our own uid only, requests with bodies. 256 connections at most
# (each one fd), so a flood of clients never takes the descriptors FFmpeg respawns need.
CONTROL = Limits(MAX_BODY, 256, REQUEST_TIMEOUT, check_uid=True)
# The metrics TCP listener, reachable from the network: no body ever, 64 connections,
# accepted 16 at a time, so that a flood of peers waits in the kernel, not in our fds.
PUBLIC = Limits(0, 64, 5.0, check_uid=False, accept_batch=16)


class HTTPError(Exception):
    """A request refused before it reaches the handler, with its status.

    Its message is ours alone: never a piece of the request (a peer's bytes are
    neither echoed nor run through the masking).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def _line(reader: asyncio.StreamReader, budget: int) -> bytes:
    """One CRLF- or LF-terminated line of at most ``min(MAX_LINE, budget)`` bytes."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        # The reader's own bound (its buffer never holds more) came first.
        raise HTTPError(431, "request header line too long") from None
    except asyncio.IncompleteReadError:
        raise HTTPError(400, "the request ended before its headers did") from None
    if len(line) > MAX_LINE:
        raise HTTPError(431, f"request header line longer than {MAX_LINE} bytes")
    if len(line) > budget:
        raise HTTPError(431, f"request headers larger than {MAX_HEAD} bytes")
    return line


def _request_line(first: bytes) -> tuple[str, str]:
    """The method and target of a request line, both checked."""
    words = first.decode("latin-1").strip().split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise HTTPError(400, "malformed request line")
    method, target, _version = words
    if not _METHOD.fullmatch(method.upper()):
        raise HTTPError(400, "malformed request method")
    if len(target) > MAX_TARGET:
        raise HTTPError(414, f"request target longer than {MAX_TARGET} bytes")
    if not target.startswith("/"):
        raise HTTPError(400, "the request target must be a path")
    return method.upper(), target


def _body_length(headers: dict[str, str], max_body: int) -> int:
    if "transfer-encoding" in headers:
        raise HTTPError(411, "chunked bodies are not supported: send a Content-Length")
    text = headers.get("content-length", "0")
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise HTTPError(400, "invalid Content-Length")
    length = int(text)
    if length > max_body:
        if not max_body:
            raise HTTPError(413, "this address takes no request body")
        raise HTTPError(413, f"request body larger than {max_body} bytes")
    return length


def check_json(doc: Any) -> None:
    """Refuse a body whose strings or nesting pass the limits, before anything reads it.

    Iterative, so a deep document costs a loop, never the interpreter's stack.
    """
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                raise HTTPError(400, f"a string of the request body is longer than {MAX_STRING}")
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise HTTPError(400, f"the request body is nested deeper than {MAX_DEPTH}")
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)
                stack.extend((item, depth + 1) for item in value.values())
            else:
                stack.extend((item, depth + 1) for item in value)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body (``{}`` when empty), within the limits."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except RecursionError:
        raise HTTPError(400, f"the request body is nested deeper than {MAX_DEPTH}") from None
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    check_json(body)
    return body


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int = MAX_BODY
) -> Request:
    """Read and parse one request; raise HTTPError for what it breaks."""
    budget = MAX_HEAD
    first = await _line(reader, budget)
    budget -= len(first)
    method, target = _request_line(first)
    headers: dict[str, str] = {}
    count = 0
    while True:
        raw = await _line(reader, budget)
        budget -= len(raw)
        line = raw.decode("latin-1").strip()
        if not line:
            break
        count += 1
        if count > MAX_HEADERS:
            raise HTTPError(431, f"more than {MAX_HEADERS} request headers")
        key, sep, value = line.partition(":")
        if not sep:
            raise HTTPError(400, "malformed header line")
        headers[key.strip().lower()] = value.strip()
    length = _body_length(headers, max_body)
    if length and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        raw_body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        raise HTTPError(400, "the request ended before its body did") from None
    body = parse_body(raw_body)
    try:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query, max_num_fields=20).items()}
    except ValueError:
        raise HTTPError(400, "malformed request target") from None
    return method, url.path.rstrip("/") or "/", query, body


def encode(status: int, body: dict[str, Any] | Text) -> bytes:
    """The whole response; a JSON body has every string masked on its way out."""
    if isinstance(body, Text):
        payload, content_type = body.body, body.content_type
    else:
        payload = json.dumps(mask_document(body)).encode() + b"\n"
        content_type = "application/json"
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


_BUSY = encode(503, {"success": False, "message": "too many connections: try again shortly"})


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read and drop what a refused client still sends, briefly, so it sees our answer."""
    budget = _DRAIN_BYTES
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(_DRAIN_AFTER_ERROR):
            while budget > 0 and (chunk := await reader.read(1 << 16)):
                budget -= len(chunk)


async def _finish(writer: asyncio.StreamWriter) -> None:
    """Close within WRITE_TIMEOUT: a peer that stops reading is cut off, never waited for."""
    writer.close()
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError):
        pass


async def _answer(
    handle: Handler, limits: Limits, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    uid = peer_uid(writer) if limits.check_uid else None
    request: Request | None = None
    reply: Reply | TextReply
    try:
        # Read the request even from a caller about to be refused, so that it
        # gets its answer instead of a broken pipe while it is still sending.
        async with asyncio.timeout(limits.request_timeout):
            request = await read_request(reader, writer, limits.max_body)
    except TimeoutError:
        reply = (408, {"success": False, "message": "request not sent in time"})
    except HTTPError as exc:
        reply = (exc.status, {"success": False, "message": f"bad request: {exc}"})
    if request is not None and uid is not None and uid not in (os.getuid(), 0):
        # The socket's mode already keeps others out; this holds if it is loosened.
        log.warning("refused a client of uid %d", uid)
        reply = (403, {"success": False, "message": "permission denied"})
    elif request is not None:
        reply = await handle(*request)
    writer.write(encode(*reply))
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()
    if request is None and limits.max_body and writer.can_write_eof():
        writer.write_eof()
        await _discard(reader)


def connection_handler(
    handle: Handler, limits: Limits = CONTROL
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Wrap ``handle`` into an asyncio connection callback within ``limits``.

    ``PUBLIC`` is for the metrics TCP listener, whose handler serves only
    ``GET /metrics``: a TCP peer has no uid to check.
    """
    open_connections = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        if open_connections >= limits.max_connections:
            writer.write(_BUSY)  # small enough for the socket buffer: never waits
            writer.close()
            return
        open_connections += 1
        try:
            try:
                await _answer(handle, limits, reader, writer)
            except (ConnectionError, TimeoutError, OSError) as exc:
                # A peer that vanished or stopped reading: its business, one line at most.
                log.debug("connection dropped: %s", type(exc).__name__)
                writer.transport.abort()
            await _finish(writer)
        finally:
            open_connections -= 1

    return on_connection
