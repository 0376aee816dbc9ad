"""Fuzz tier: whatever a peer sends, the daemon answers one well-formed 4xx (or a 2xx).

In-process and bounded (hypothesis, a fixed number of examples, every exchange under
a deadline): the HTTP request parser and connection handler on a socket pair, and
the JSON body of every control route through the controller's dispatch. Never a 500,
a hang, a traceback or a read past the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import tempfile
from pathlib import Path
from typing import Any

from fakes import make_controller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamalchemy.server import httpserver, routes
from streamalchemy.server.metrics import DaemonFigures, Metrics
from streamalchemy.server.routes import ROUTES

EXCHANGE_DEADLINE = 5.0  # seconds; a hang fails the example instead of the run

FIELDS = [
    *("name", "file", "url", "testsrc", "codec", "resolution", "fps", "audio", "hwaccel"),
    *("duration", "output", "restart", "priority", "replace", "overwrite"),
    *("names", "all", "dry_run", "streams", "prune", "shard"),
]

LONG = "a" * (httpserver.MAX_STRING + 1)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["true", "yes", "rtsp://u:p@[::1/x", LONG, "testsrc", "null"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=6)


def _head(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


tokens = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
requests = st.one_of(
    st.binary(max_size=600),
    st.builds(
        _head,
        st.sampled_from(["GET", "POST", "DELETE", "PUT", "get", "GE T", "X" * 40]) | tokens,
        st.sampled_from(["/metrics", "/streams", "/stop", "//[::1/x", "/?a=1&a=2", "*"])
        | st.text(max_size=30).map(lambda t: "/" + t)
        | st.just("/" + "a" * 3000),
        st.lists(
            st.tuples(
                st.sampled_from(["Content-Length", "Transfer-Encoding", "Expect", "Host"]) | tokens,
                st.sampled_from(["0", "5", "-1", "99999999999999", "chunked", "100-continue"])
                | st.text(max_size=20).filter(lambda v: "\r" not in v and "\n" not in v),
            ),
            max_size=5,
        ),
        st.binary(max_size=80) | bodies.map(lambda b: json.dumps(b).encode()),
    ),
    st.builds(
        lambda depth: _head(
            "POST", "/stop", [("Content-Length", str(2 * depth))], b"[" * depth + b"]" * depth
        ),
        st.integers(900, 3000),
    ),
)


async def _echo(method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> Any:
    return 200, {"success": True}


async def _exchange(handler: Any, data: bytes) -> bytes:
    """Send ``data`` through ``handler`` on a socket pair; the whole reply, within the deadline."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(sock=ours)
        served = asyncio.create_task(handler(reader, writer))
        async with asyncio.timeout(EXCHANGE_DEADLINE):
            if data:
                # Refused before it was all sent: the answer is what matters.
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(theirs, data)
            theirs.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := await loop.sock_recv(theirs, 1 << 16):
                chunks.append(chunk)
            await served
    return b"".join(chunks)


def _check_reply(reply: bytes) -> int:
    head, sep, payload = reply.partition(b"\r\n\r\n")
    assert sep, reply[:200]
    status = int(head.split(b" ", 2)[1])
    assert status < 500, reply[:300]
    if status >= 400:
        message = json.loads(payload)["message"]
        assert isinstance(message, str) and "\n" not in message
        assert len(message) < 200  # fixed words, never the request repeated
    return status


def _quick(max_examples: int) -> Any:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@_quick(150)
@given(requests)
def test_any_request_on_the_control_socket_gets_a_clear_answer(data: bytes) -> None:
    limits = httpserver.Limits(httpserver.MAX_BODY, 4, 1.0, check_uid=False)
    handler = httpserver.connection_handler(_echo, limits)
    _check_reply(asyncio.run(_exchange(handler, data)))


@_quick(100)
@given(requests)
def test_any_request_on_the_metrics_address_gets_a_clear_answer(data: bytes) -> None:
    figures = DaemonFigures(0.0, {}, 0, 0)
    metrics = Metrics(lambda: [], lambda: figures)
    limits = httpserver.Limits(0, 4, 1.0, check_uid=False)
    handler = httpserver.connection_handler(metrics.handle_tcp, limits)
    status = _check_reply(asyncio.run(_exchange(handler, data)))
    assert status in (200, 400, 404, 405, 408, 411, 413, 414, 431)


class _Tracebacks(logging.Handler):
    """Collects the log records that carry a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen.append(record.getMessage())


PATHS = st.sampled_from(["a", "cam1", "x" * 60, "..", "a b", "%2e%2e", "é"])


@_quick(150)
@given(route=st.sampled_from(ROUTES), name=PATHS, body=bodies, lines=st.text(max_size=8))
def test_any_json_body_on_any_route_is_answered_never_a_500(
    route: Any, name: str, body: dict[str, Any], lines: str
) -> None:
    method, pattern, _handler = route
    path = pattern.replace("{name}", name)
    with tempfile.TemporaryDirectory(prefix="sa-", dir="/tmp") as home:
        controller, _fake = make_controller(Path(home))
        try:
            httpserver.check_json(body)
        except httpserver.HTTPError:
            return  # the HTTP layer answers 400 before any route sees it
        tracebacks = _Tracebacks()
        logging.getLogger("streamalchemy").addHandler(tracebacks)
        try:
            status, reply = asyncio.run(
                routes.handle(controller, method, path, {"lines": lines}, body)
            )
        finally:
            logging.getLogger("streamalchemy").removeHandler(tracebacks)
            controller.writer.close()
    assert status < 500, (method, path, body, reply)
    assert not tracebacks.seen, tracebacks.seen
    if status >= 400:
        assert "\n" not in reply["message"]
