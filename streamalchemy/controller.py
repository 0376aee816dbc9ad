"""The daemon's decisions: what each request does to the streams and the state file.

One method per request, and the HTTP routes as a table (``ROUTES``) mapping a
method and a path pattern to a handler. Nothing here binds sockets, handles
signals or sets up logging (that is ``daemon``); the supervisor carries the
decisions out and the state store records them. Every start that answers success
is in the state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import streamalchemy
from streamalchemy import __version__, encoders
from streamalchemy.details import running_details, saved_details
from streamalchemy.errors import (
    InvalidInput,
    OperationFailed,
    StreamAlchemyError,
    StreamExists,
    StreamNotFound,
)
from streamalchemy.ffmpeg import STATS_PERIOD, build_argv, output_target
from streamalchemy.httpserver import Reply
from streamalchemy.outputs import refuse_existing_file
from streamalchemy.persist import StateStore, new_entry
from streamalchemy.procs import ChildRecord
from streamalchemy.restore import Step, dry_run_results, plan
from streamalchemy.settings import Settings
from streamalchemy.sources import check_source
from streamalchemy.spec import (
    StreamSpec,
    mask_credentials,
    read_saved,
    spec_from_request,
    validate_name,
)
from streamalchemy.supervisor import REPLACED, USER_RESTART, Stream, Supervisor

log = logging.getLogger("streamalchemy.daemon")

CONFIRM_WINDOW = 5.0  # seconds a start waits for FFmpeg's first progress report
RESTORE_PARALLEL = 16  # FFmpeg processes starting at once during a restore


@dataclass(frozen=True)
class Request:
    """One HTTP request as a handler sees it: ``params`` are the path pattern's fields."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any]


class Controller:
    """The daemon's decisions: what each request does to the streams and the state file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = StateStore(
            settings.state_file,
            backup_count=settings.backup_count,
            enabled=settings.persistence_enabled,
        )
        self.supervisor = Supervisor(
            record=ChildRecord(settings.data_dir / "children.json"),
            log_dir=settings.log_dir,
            stall_timeout=settings.stall_timeout,
            on_end=self._on_end,
            log_max_bytes=settings.log_max_bytes,
            log_backups=settings.log_backups,
        )
        self.started = time.time()
        self.not_restored: dict[str, str] = {}  # saved streams left out, and why
        self.shutdown = asyncio.Event()
        self._busy: set[str] = set()
        self.choose_encoder = encoders.Chooser(settings.ffmpeg, settings.data_dir)

    # -- helpers -----------------------------------------------------------------

    @contextlib.contextmanager
    def _reserve(self, names: list[str]) -> Iterator[None]:
        """Keep two requests from working on the same stream at once."""
        clash = [n for n in names if n in self._busy]
        if clash:
            raise StreamExists(f"stream {clash[0]!r} is being started or stopped; try again")
        self._busy.update(names)
        try:
            yield
        finally:
            self._busy.difference_update(names)

    def _launch(self, spec: StreamSpec, saved_at: float, encoder: str) -> Stream:
        target = output_target(spec, self.settings.rtsp_url, self.settings.hls_dir)

        def argv_for(current: str) -> list[str]:
            # Built per spawn: a restarted recording writes the next numbered file.
            return build_argv(
                spec,
                ffmpeg=self.settings.ffmpeg,
                encoder=encoder,
                target=current,
                # Reports often enough that a healthy stream never looks stalled.
                stats_period=min(STATS_PERIOD, self.settings.stall_timeout / 2),
            )

        log.info("starting %s -> %s", spec.name, mask_credentials(target))
        self.not_restored.pop(spec.name, None)
        return self.supervisor.launch(
            spec, saved_at=saved_at, encoder=encoder, target=target, argv_for=argv_for
        )

    def _on_end(self, stream: Stream) -> None:
        log.info("%s %s: %s", stream.spec.name, stream.status, stream.last_error or "done")
        if stream.status == "finished":
            # Ended by itself (duration reached or a clean exit): nothing to bring back.
            self.store.remove(stream.spec.name)

    # -- requests ----------------------------------------------------------------

    async def start(self, body: dict[str, Any]) -> Reply:
        spec = spec_from_request(body)
        replace = body.get("replace", False)
        if not isinstance(replace, bool):
            raise InvalidInput(f"replace must be true or false, not {replace!r}")
        overwrite = body.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise InvalidInput(f"overwrite must be true or false, not {overwrite!r}")
        with self._reserve([spec.name]):
            current = self.supervisor.streams.get(spec.name)
            if current is not None and current.active and not replace:
                raise StreamExists(
                    f"stream {spec.name!r} already exists (pid {current.pid}); "
                    "use --replace or stop it first"
                )
            await asyncio.to_thread(check_source, spec, self.settings.ffprobe)
            refuse_existing_file(spec.output, overwrite)
            encoder = self.choose_encoder(spec)
            previous = current if current is not None and current.active else None
            if current is not None:
                await self.supervisor.stop(spec.name, REPLACED)
            stream = self._launch(spec, time.time(), encoder)
            failure = await stream.confirmed(CONFIRM_WINDOW)
            if failure is not None:
                await self.supervisor.stop(spec.name, f"FFmpeg failed to start: {failure}")
                message = f"{spec.name}: FFmpeg failed to start: {failure}"
                if previous is not None:
                    # As a bad configuration reload leaves the old one serving: what
                    # runs stays what the state file says.
                    self._launch(previous.spec, previous.saved_at, previous.encoder)
                    message += "; the stream it was to replace runs again"
                raise OperationFailed(message)
            self.store.save(spec.name, new_entry(spec.to_config(), stream.saved_at))
            return 200, {"success": True, "stream": stream.snapshot()}

    async def stop(self, names: list[str], all_streams: bool) -> Reply:
        saved = self.store.load()
        if all_streams:
            names = sorted(set(self.supervisor.streams) | set(saved))
        known = [n for n in dict.fromkeys(names) if n in self.supervisor.streams or n in saved]
        unknown = [n for n in names if n not in known]
        while self._busy.intersection(known):
            await asyncio.sleep(0.05)  # a start or restore of it is confirming: bounded
        with self._reserve(known):
            self.store.remove(*known)
            await asyncio.gather(
                *(self.supervisor.stop(n) for n in known if n in self.supervisor.streams)
            )
        for name in known:
            self.not_restored.pop(name, None)
            log.info("stopped %s", name)
        if unknown:
            done = f" (stopped: {', '.join(known)})" if known else ""
            return 404, {
                "success": False,
                "message": f"no such stream: {', '.join(unknown)}{done}",
                "stopped": known,
            }
        return 200, {"success": True, "stopped": known}

    async def restore(self, dry_run: bool) -> dict[str, dict[str, str]]:
        steps = plan(
            self.store.load(),
            running={n for n, s in self.supervisor.streams.items() if s.active} | self._busy,
            choose_encoder=self.choose_encoder,
        )
        if dry_run:
            return dry_run_results(steps)
        expired = [s.name for s in steps if s.expired]
        self.store.remove(*expired)
        for step in steps:
            if step.result != "restored":
                self.not_restored[step.name] = step.reason
                log.info("restore %s: %s (%s)", step.name, step.result, step.reason)
                self.supervisor.note(step.name, f"restore {step.result}: {step.reason}")
        for name in expired:
            self.not_restored.pop(name, None)
        results = {s.name: {"result": s.result, "reason": s.reason} for s in steps}
        to_start = [s for s in steps if s.result == "restored"]
        slots = asyncio.Semaphore(RESTORE_PARALLEL)

        async def start_one(step: Step) -> None:
            assert step.spec is not None
            async with slots:
                with self._reserve([step.name]):
                    stream = self._launch(step.spec, step.saved_at, step.encoder)
                    failure = await stream.confirmed(CONFIRM_WINDOW)
            if failure is None:
                results[step.name]["reason"] = "started"
            else:
                # The stream stays saved and keeps retrying under its restart policy.
                results[step.name] = {"result": "failed", "reason": failure}
            log.info("restore %s: %s", step.name, results[step.name]["reason"])

        await asyncio.gather(*(start_one(step) for step in to_start))
        return results

    async def restore_at_launch(self) -> None:
        # Probing encoders may run test encodes: keep the socket answering meanwhile.
        try:
            await asyncio.to_thread(self.choose_encoder.table)
        except StreamAlchemyError as exc:
            log.error("%s", exc)  # each stream's restore then reports it
        await self.restore(dry_run=False)

    def status(self) -> dict[str, Any]:
        return {
            "success": True,
            "pid": os.getpid(),
            "version": __version__,
            "uptime_seconds": time.time() - self.started,
            "socket": str(self.settings.socket),
            "state_file": str(self.settings.state_file),
            "persistence_enabled": self.store.enabled,
            "streams": sum(1 for s in self.supervisor.streams.values() if s.active),
            "log_dir": str(self.settings.log_dir),
            "ffmpeg": self.settings.ffmpeg,
            # Which home and which installation answer: a second install's CLI
            # would otherwise drive this daemon without knowing it.
            "home": str(self.settings.data_dir),
            "install_path": os.path.dirname(os.path.abspath(streamalchemy.__file__)),
        }

    def list_streams(self) -> dict[str, Any]:
        saved = self.store.load()
        active = {n for n, s in self.supervisor.streams.items() if s.active}
        not_running = {
            name: self.not_restored.get(name, "not started since the daemon launched")
            for name in sorted(saved)
            if name not in active
        }
        return {
            "success": True,
            "streams": [s.snapshot() for _, s in sorted(self.supervisor.streams.items())],
            "not_running": not_running,
        }

    def logs(self, name: str, lines: str) -> Reply:
        name = validate_name(name)
        try:
            count = int(lines)
            if count < 0:
                raise ValueError
        except ValueError as exc:
            raise InvalidInput(f"lines must be a whole number >= 0, not {lines!r}") from exc
        path = self.supervisor.log_path(name)
        if not path.exists() and name not in self.supervisor.streams:
            raise StreamNotFound(f"no such stream: {name}")
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        tail = text.splitlines()[-count:] if count else []
        return 200, {"success": True, "name": name, "path": str(path), "lines": tail}

    async def restart(self, name: str) -> Reply:
        """Stop and start ``name`` again with its saved spec, keeping its ``saved_at``."""
        name = validate_name(name)
        entry = self.store.load().get(name)
        current = self.supervisor.streams.get(name)
        if entry is not None:
            view = read_saved(name, entry)
            if view.spec is None:
                raise OperationFailed(f"{name}: cannot restart it: {view.error}")
            spec, saved_at = view.spec, view.saved_at
        elif current is not None and current.active:  # persistence off: what runs
            spec, saved_at = current.spec, current.saved_at
        else:
            raise StreamNotFound(f"no such stream: {name}")
        if spec.duration and time.time() >= saved_at + spec.duration:
            raise OperationFailed(f"{name}: its duration has ended; start it again to run it anew")
        while name in self._busy:
            await asyncio.sleep(0.05)  # a start, stop or restore of it is under way: bounded
        with self._reserve([name]):
            await asyncio.to_thread(check_source, spec, self.settings.ffprobe)
            encoder = self.choose_encoder(spec)
            previous = self.supervisor.streams.get(name)
            if previous is not None:
                await self.supervisor.stop(name, USER_RESTART)
            stream = self._launch(spec, saved_at, encoder)
            if previous is not None:  # show keeps the history across the user's restart
                stream.exits.extendleft(reversed(previous.exits))
            failure = await stream.confirmed(CONFIRM_WINDOW)
        if failure is not None:
            # Still saved: it keeps retrying under its restart policy, as after a restore.
            raise OperationFailed(f"{name}: FFmpeg failed to start again: {failure}")
        log.info("restarted %s", name)
        return 200, {"success": True, "restarted": [name], "stream": stream.snapshot()}

    def details(self, name: str) -> Reply:
        """``show NAME``: a stream the supervisor has, or a saved one that does not run."""
        name = validate_name(name)
        stream = self.supervisor.streams.get(name)
        if stream is not None:
            return 200, dict(running_details(stream.snapshot(), stream.spec))
        entry = self.store.load().get(name)
        if entry is None:
            raise StreamNotFound(f"no such stream: {name}")
        settings = self.settings
        doc = saved_details(
            name,
            entry,
            log_file=str(self.supervisor.log_path(name)),
            why=self.not_restored.get(name, "not started since the daemon launched"),
            target=lambda spec: output_target(spec, settings.rtsp_url, settings.hls_dir),
        )
        return 200, dict(doc)

    async def route_restart(self, req: Request) -> Reply:
        return await self.restart(req.params["name"])

    async def route_details(self, req: Request) -> Reply:
        return self.details(req.params["name"])

    # -- routes: one handler per (method, path pattern) of ROUTES --------------------

    async def route_status(self, req: Request) -> Reply:
        return 200, self.status()

    async def route_shutdown(self, req: Request) -> Reply:
        asyncio.get_running_loop().call_later(0.05, self.shutdown.set)
        return 200, {"success": True, "message": "shutting down", "pid": os.getpid()}

    async def route_list(self, req: Request) -> Reply:
        return 200, self.list_streams()

    async def route_start(self, req: Request) -> Reply:
        return await self.start(req.body)

    async def route_stream(self, req: Request) -> Reply:
        stream = self.supervisor.streams.get(req.params["name"])
        if stream is None:
            raise StreamNotFound(f"no such stream: {req.params['name']}")
        return 200, {"success": True, "stream": stream.snapshot()}

    async def route_delete(self, req: Request) -> Reply:
        return await self.stop([req.params["name"]], False)

    async def route_stop(self, req: Request) -> Reply:
        names = req.body.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidInput("names must be a list of stream names")
        return await self.stop(names, req.body.get("all") is True)

    async def route_logs(self, req: Request) -> Reply:
        return self.logs(req.params["name"], req.query.get("lines", "50"))

    async def route_saved(self, req: Request) -> Reply:
        return 200, {"success": True, "streams": self.store.load(), "enabled": self.store.enabled}

    async def route_clear(self, req: Request) -> Reply:
        self.store.clear()
        return 200, {"success": True, "message": "All persistent streams cleared"}

    async def route_restore(self, req: Request) -> Reply:
        results = await self.restore(req.body.get("dry_run") is True)
        return 200, {
            "success": all(r["result"] != "failed" for r in results.values()),
            "message": "Stream restoration triggered",
            "results": results,
        }

    # -- dispatch ----------------------------------------------------------------

    async def handle(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> Reply:
        """Answer one request; every failure becomes a reply, never an exception."""
        try:
            for route_method, pattern, handler in ROUTES:
                if route_method == method and (m := _compile(pattern).fullmatch(path)):
                    return await handler(self, Request(method, path, m.groupdict(), query, body))
        except StreamAlchemyError as exc:
            return exc.http_status, {"success": False, "message": str(exc)}
        except Exception as exc:  # a bug must not take the daemon down
            log.exception("error handling %s %s", method, path)
            return 500, {"success": False, "message": f"daemon error: {exc}"}
        return 404, {"success": False, "message": f"no such endpoint: {method} {path}"}


Handler = Callable[[Controller, Request], Awaitable[Reply]]

# (method, path pattern, handler); ``{field}`` matches one path segment and reaches
# the handler as ``req.params[field]``. Add a route with one line here.
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/status", Controller.route_status),
    ("POST", "/shutdown", Controller.route_shutdown),
    ("GET", "/streams", Controller.route_list),
    ("POST", "/streams", Controller.route_start),
    ("GET", "/streams/{name}", Controller.route_stream),
    ("DELETE", "/streams/{name}", Controller.route_delete),
    ("POST", "/stop", Controller.route_stop),
    ("GET", "/streams/{name}/logs", Controller.route_logs),
    ("GET", "/persistent_streams", Controller.route_saved),
    ("POST", "/clear_persistent_streams", Controller.route_clear),
    ("POST", "/restore_streams", Controller.route_restore),
    ("POST", "/streams/{name}/restart", Controller.route_restart),
    ("GET", "/streams/{name}/details", Controller.route_details),
]


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    fields = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern))
    return re.compile(fields)
