"""A small HTTP/1.1 JSON server on a Unix socket, for callers of our own uid only.

Just enough HTTP for the CLI and ``curl --unix-socket``: one request per
connection, bodies by Content-Length, JSON both ways. Every read is bounded (line
length, header count, head size, body size, time to send the request), so a
client that never stops sending costs a few KiB, not the daemon's memory; and
every JSON reply goes out through ``mask_document``, so no reply carries a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
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
MAX_HEADERS = 100  # header lines (431 past it)
MAX_HEAD = 32 << 10  # request line and headers together (431 past it)
MAX_BODY = 1 << 20  # Content-Length (413 past it)
REQUEST_TIMEOUT = 10.0  # seconds to send the whole request (408 past it)
_DRAIN_AFTER_ERROR = 1.0  # seconds spent discarding what a refused client still sends,
_DRAIN_BYTES = 1 << 20  # and bytes at most


class HTTPError(Exception):
    """A request refused before it reaches the handler, with its status."""

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
    except asyncio.IncompleteReadError as exc:
        raise HTTPError(400, "the request ended before its headers did") from exc
    if len(line) > MAX_LINE:
        raise HTTPError(431, f"request header line longer than {MAX_LINE} bytes")
    if len(line) > budget:
        raise HTTPError(431, f"request headers larger than {MAX_HEAD} bytes")
    return line


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
    """Read and parse one request; raise HTTPError for what it breaks."""
    budget = MAX_HEAD
    first = await _line(reader, budget)
    budget -= len(first)
    words = first.decode("latin-1").strip().split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise HTTPError(400, "malformed request line")
    method, target, _version = words
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
            raise HTTPError(400, f"malformed header line {line[:40]!r}")
        headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise HTTPError(411, "chunked bodies are not supported: send a Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
        if length < 0:
            raise ValueError
    except ValueError:
        raise HTTPError(400, "invalid Content-Length") from None
    if length > MAX_BODY:
        raise HTTPError(413, f"request body larger than {MAX_BODY} bytes")
    if length and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        raw_body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise HTTPError(400, "the request ended before its body did") from exc
    try:
        body = json.loads(raw_body) if raw_body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    url = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    return method.upper(), url.path.rstrip("/") or "/", query, body


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


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read and drop what a refused client still sends, briefly, so it sees our answer."""
    budget = _DRAIN_BYTES
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(_DRAIN_AFTER_ERROR):
            while budget > 0 and (chunk := await reader.read(1 << 16)):
                budget -= len(chunk)


def connection_handler(
    handle: Handler, *, check_uid: bool = True
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Wrap ``handle`` into an asyncio connection callback that checks the caller's uid.

    ``check_uid=False`` is for the metrics TCP listener, whose handler serves only
    ``GET /metrics``: a TCP peer has no uid to check.
    """
    own_uid = os.getuid()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refused = False
        try:
            uid = peer_uid(writer) if check_uid else None
            request: Request | None = None
            reply: Reply | TextReply
            try:
                # Read the request even from a caller about to be refused, so that it
                # gets its answer instead of a broken pipe while it is still sending.
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    request = await read_request(reader, writer)
            except TimeoutError:
                reply = (408, {"success": False, "message": "request not sent in time"})
            except HTTPError as exc:
                reply = (exc.status, {"success": False, "message": f"bad request: {exc}"})
            if request is None:
                refused = True
            elif uid is not None and uid not in (own_uid, 0):
                # The socket's mode already keeps others out; this holds if it is loosened.
                log.warning("refused a client of uid %d", uid)
                reply = (403, {"success": False, "message": "permission denied"})
            else:
                reply = await handle(*request)
            writer.write(encode(*reply))
            await writer.drain()
            if refused and writer.can_write_eof():
                writer.write_eof()
                await _discard(reader)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    return on_connection
