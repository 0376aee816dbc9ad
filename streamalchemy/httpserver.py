"""A small HTTP/1.1 JSON server on a Unix socket, for callers of our own uid only.

Just enough HTTP for the CLI and ``curl --unix-socket``: one request per
connection, bodies by Content-Length, JSON both ways.
"""

from __future__ import annotations

import asyncio
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

log = logging.getLogger("streamalchemy.http")

Reply = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Text:
    """A body that is not JSON (the metrics exposition), with its Content-Type."""

    body: bytes
    content_type: str


TextReply = tuple[int, Text]
Handler = Callable[[str, str, dict[str, str], dict[str, Any]], Awaitable[Reply | TextReply]]
MAX_BODY = 1 << 20


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], dict[str, Any]]:
    request_line = (await reader.readline()).decode("latin-1").strip()
    method, target, _version = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            break
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length > MAX_BODY:
        raise ValueError("request body too large")
    raw = await reader.readexactly(length) if length else b""
    body = json.loads(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    url = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    return method.upper(), url.path.rstrip("/") or "/", query, body


def _encode(status: int, body: dict[str, Any] | Text) -> bytes:
    if isinstance(body, Text):
        payload, content_type = body.body, body.content_type
    else:
        payload, content_type = json.dumps(body).encode() + b"\n", "application/json"
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


def connection_handler(
    handle: Handler, *, check_uid: bool = True
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Wrap ``handle`` into an asyncio connection callback that checks the caller's uid.

    ``check_uid=False`` is for the metrics TCP listener, whose handler serves only
    ``GET /metrics``: a TCP peer has no uid to check.
    """
    own_uid = os.getuid()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = peer_uid(writer) if check_uid else None
            try:
                # Read the request even from a caller about to be refused, so that it
                # gets its answer instead of a broken pipe while it is still sending.
                request = await asyncio.wait_for(_read_request(reader), 30)
            except (ValueError, UnicodeDecodeError, asyncio.IncompleteReadError) as exc:
                request = None
                reply: Reply | TextReply = (
                    400,
                    {"success": False, "message": f"bad request: {exc}"},
                )
            if uid is not None and uid not in (own_uid, 0):
                # The socket's mode already keeps others out; this holds if it is loosened.
                log.warning("refused a client of uid %d", uid)
                reply = (403, {"success": False, "message": "permission denied"})
            elif request is not None:
                reply = await handle(*request)
            writer.write(_encode(*reply))
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    return on_connection
