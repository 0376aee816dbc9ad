"""The daemon's HTTP face: one route table, and a handler per route that reads or dispatches.

A handler validates the request's shape, asks the controller (the per-name lifecycle)
to act or reads what it reports, and shapes the reply. Nothing here owns a stream or
writes the state file; every change goes through ``Controller``'s lifecycle API.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import streamalchemy
from streamalchemy import __version__
from streamalchemy.core.details import running_details, saved_details
from streamalchemy.core.spec import spec_from_request, validate_name
from streamalchemy.errors import InvalidInput, StreamAlchemyError, StreamNotFound
from streamalchemy.server.bodies import check_body
from streamalchemy.server.controller import Controller, Stopped
from streamalchemy.server.httpserver import Reply, TextReply

log = logging.getLogger("streamalchemy.daemon")

NOT_STARTED = "not started since the daemon launched"


@dataclass(frozen=True)
class Request:
    """One HTTP request as a handler sees it: ``params`` are the path pattern's fields."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any]


def stop_reply(result: Stopped) -> Reply:
    """A stop's reply: 500 if its removal could not be written, 404 for unknown names."""
    if result.write_error is not None:
        return 500, {
            "success": False,
            "message": f"stopped {', '.join(result.stopped)}, but {result.write_error}; "
            "they will not be restored, and the write is retried",
            "stopped": result.stopped,
        }
    if result.unknown:
        done = f" (stopped: {', '.join(result.stopped)})" if result.stopped else ""
        return 404, {
            "success": False,
            "message": f"no such stream: {', '.join(result.unknown)}{done}",
            "stopped": result.stopped,
        }
    return 200, {"success": True, "stopped": result.stopped}


# -- reports: what the daemon says about itself and its streams ---------------------


def status(c: Controller) -> dict[str, Any]:
    return {
        "success": True,
        "pid": os.getpid(),
        "version": __version__,
        "uptime_seconds": time.time() - c.started,
        "started_at": c.started,
        "live_restore": c.settings.live_restore,
        "socket": str(c.settings.socket),
        "state_file": str(c.settings.state_file),
        "persistence_enabled": c.store.enabled,
        "streams": sum(1 for s in c.supervisor.streams.values() if s.active),
        "log_dir": str(c.settings.log_dir),
        # Where GET /metrics is served over TCP besides the socket; None: the socket only.
        "metrics_addr": _addr_text(c.settings.metrics_addr),
        "ffmpeg": c.settings.ffmpeg,
        "state_write_ok": c.store.write_error is None,
        "state_write_error": c.store.write_error,
        # Which home and which installation answer: a second install's CLI
        # would otherwise drive this daemon without knowing it.
        "home": str(c.settings.data_dir),
        "install_path": os.path.dirname(os.path.abspath(streamalchemy.__file__)),
    }


def _addr_text(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def list_streams(c: Controller) -> dict[str, Any]:
    saved = await c.writer.load()
    active = c.kept()
    not_running = {
        name: c.not_restored.get(name, NOT_STARTED) for name in sorted(saved) if name not in active
    }
    return {
        "success": True,
        "streams": [
            {**s.snapshot(), "saved": n in saved} for n, s in sorted(c.supervisor.streams.items())
        ],
        "not_running": not_running,
    }


def logs(c: Controller, name: str, lines: str) -> Reply:
    name = validate_name(name)
    try:
        count = int(lines)
        if count < 0:
            raise ValueError
    except ValueError as exc:
        raise InvalidInput(f"lines must be a whole number >= 0, not {lines!r}") from exc
    path = c.supervisor.log_path(name)
    if not path.exists() and name not in c.supervisor.streams:
        raise StreamNotFound(f"no such stream: {name}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    tail = data.decode(errors="replace").splitlines()[-count:] if count else []
    # ``offset``: where a follower starts, so no line between this read and its own is lost.
    return 200, {
        "success": True,
        "name": name,
        "path": str(path),
        "lines": tail,
        "offset": len(data),
    }


async def details(c: Controller, name: str) -> Reply:
    """``show NAME``: a stream the supervisor has, or a saved one that does not run."""
    name = validate_name(name)
    stream = c.supervisor.streams.get(name)
    saved = await c.writer.load()
    if stream is not None:
        doc = running_details({**stream.snapshot(), "saved": name in saved}, stream.spec)
        return 200, dict(doc)
    entry = saved.get(name)
    if entry is None:
        raise StreamNotFound(f"no such stream: {name}")
    settings = c.settings
    found = saved_details(
        name,
        entry,
        log_file=str(c.supervisor.log_path(name)),
        why=c.not_restored.get(name, NOT_STARTED),
        target=lambda spec: spec.target(settings.rtsp_url, settings.hls_dir),
    )
    return 200, dict(found)


# -- routes: one handler per (method, path pattern) of ROUTES ------------------------


async def route_status(c: Controller, req: Request) -> Reply:
    return 200, status(c)


async def route_metrics(c: Controller, req: Request) -> TextReply:
    return c.metrics.reply()


async def route_shutdown(c: Controller, req: Request) -> Reply:
    asyncio.get_running_loop().call_later(0.05, c.shutdown.set)
    return 200, {"success": True, "message": "shutting down", "pid": os.getpid()}


async def route_restart_daemon(c: Controller, req: Request) -> Reply:
    if c.restart_daemon is None:  # a controller outside the daemon (tests)
        return 404, {"success": False, "message": "this daemon cannot restart itself"}
    return 200, await c.restart_daemon()


async def route_list(c: Controller, req: Request) -> Reply:
    return 200, await list_streams(c)


async def route_start(c: Controller, req: Request) -> Reply:
    """``POST /streams``: the request-shaped form of ``start_spec``."""
    body = req.body
    spec = spec_from_request(body)
    flags = {key: body.get(key, False) for key in ("replace", "overwrite")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise InvalidInput(f"{key} must be true or false, not {value!r}")
    stream = await c.start_spec(spec, replace=flags["replace"], overwrite=flags["overwrite"])
    return 200, {"success": True, "stream": stream.snapshot()}


async def route_stream(c: Controller, req: Request) -> Reply:
    stream = c.supervisor.streams.get(req.params["name"])
    if stream is None:
        raise StreamNotFound(f"no such stream: {req.params['name']}")
    return 200, {"success": True, "stream": stream.snapshot()}


async def route_delete(c: Controller, req: Request) -> Reply:
    return stop_reply(await c.stop_names([req.params["name"]]))


async def route_stop(c: Controller, req: Request) -> Reply:
    """``POST /stop``: the request-shaped form of ``stop_names`` and ``stop_all``."""
    names = req.body.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidInput("names must be a list of stream names")
    all_streams = req.body.get("all") is True
    return stop_reply(await (c.stop_all() if all_streams else c.stop_names(names)))


async def route_restart(c: Controller, req: Request) -> Reply:
    """``POST /streams/NAME/restart``: the request-shaped form of ``restart_name``."""
    name = req.params["name"]
    stream = await c.restart_name(name)
    return 200, {"success": True, "restarted": [name], "stream": stream.snapshot()}


async def route_logs(c: Controller, req: Request) -> Reply:
    # A log of up to its size cap is read in a thread, off the event loop.
    return await asyncio.to_thread(logs, c, req.params["name"], req.query.get("lines", "50"))


async def route_saved(c: Controller, req: Request) -> Reply:
    saved = await c.writer.load()
    return 200, {"success": True, "streams": saved, "enabled": c.store.enabled}


async def route_clear(c: Controller, req: Request) -> Reply:
    await c.writer.clear()
    return 200, {"success": True, "message": "All persistent streams cleared"}


async def route_restore(c: Controller, req: Request) -> Reply:
    results = await c.restore(req.body.get("dry_run") is True)
    return 200, {
        "success": all(r["result"] != "failed" for r in results.values()),
        "message": "Stream restoration triggered",
        "results": results,
    }


async def route_details(c: Controller, req: Request) -> Reply:
    return await details(c, req.params["name"])


async def route_apply(c: Controller, req: Request) -> Reply:
    from streamalchemy.apply import applier  # apply's modules: not on every launch's path

    return await applier.handle_request(c.apply_ops(), req.body)


Handler = Callable[[Controller, Request], Awaitable[Reply | TextReply]]

# (method, path pattern, handler); ``{field}`` matches one path segment and reaches
# the handler as ``req.params[field]``. Add a route with one line here.
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/status", route_status),
    ("GET", "/metrics", route_metrics),
    ("POST", "/shutdown", route_shutdown),
    ("POST", "/restart", route_restart_daemon),
    ("GET", "/streams", route_list),
    ("POST", "/streams", route_start),
    ("GET", "/streams/{name}", route_stream),
    ("DELETE", "/streams/{name}", route_delete),
    ("POST", "/stop", route_stop),
    ("GET", "/streams/{name}/logs", route_logs),
    ("GET", "/persistent_streams", route_saved),
    ("POST", "/clear_persistent_streams", route_clear),
    ("POST", "/restore_streams", route_restore),
    ("POST", "/streams/{name}/restart", route_restart),
    ("GET", "/streams/{name}/details", route_details),
    ("POST", "/apply", route_apply),
]


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    fields = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern))
    return re.compile(fields)


async def handle(
    c: Controller, method: str, path: str, query: dict[str, str], body: dict[str, Any]
) -> Reply | TextReply:
    """Answer one request; every failure becomes a reply, never an exception."""
    try:
        for route_method, pattern, handler in ROUTES:
            if route_method == method and (m := _compile(pattern).fullmatch(path)):
                check_body(method, pattern, body)
                return await handler(c, Request(method, path, m.groupdict(), query, body))
    except StreamAlchemyError as exc:
        return exc.http_status, {"success": False, "message": str(exc)}
    except Exception as exc:  # a bug must not take the daemon down
        log.exception("error handling %s %s", method, path)
        return 500, {"success": False, "message": f"daemon error: {exc}"}
    return 404, {"success": False, "message": f"no such endpoint: {method} {path}"}


def dispatcher(
    c: Controller,
) -> Callable[[str, str, dict[str, str], dict[str, Any]], Awaitable[Reply | TextReply]]:
    """What the HTTP server calls with each request: ``handle`` bound to ``c``."""
    return functools.partial(handle, c)
