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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import streamalchemy
from streamalchemy import __version__, encoders
from streamalchemy.core.details import running_details, saved_details
from streamalchemy.core.masking import has_secret, remember, spec_secrets
from streamalchemy.core.restore import Step, dry_run_results, plan
from streamalchemy.core.spec import (
    StreamSpec,
    mask_credentials,
    read_saved,
    spec_from_request,
    validate_name,
)
from streamalchemy.errors import (
    InvalidInput,
    OperationFailed,
    StateFileError,
    StreamAlchemyError,
    StreamExists,
    StreamNotFound,
)
from streamalchemy.persist import StateStore, StateWriter, new_entry
from streamalchemy.server.httpserver import Reply, TextReply
from streamalchemy.server.inputsockets import InputSockets
from streamalchemy.server.metrics import Metrics
from streamalchemy.server.references import resolve_spec, resolved_values, unresolved
from streamalchemy.server.shedder import SIDE_FILE, Shedder
from streamalchemy.settings import Settings
from streamalchemy.supervision import procs
from streamalchemy.supervision.adoption import Survivor
from streamalchemy.supervision.ffmpeg import STATS_PERIOD, build_argv, input_script, output_target
from streamalchemy.supervision.procs import ChildRecord
from streamalchemy.supervision.recordings import refuse_existing_file
from streamalchemy.supervision.sources import check_file, check_source
from streamalchemy.supervision.supervisor import (
    REPLACED,
    SHED,
    USER_RESTART,
    USER_STOP,
    Stream,
    Supervisor,
)

if TYPE_CHECKING:
    from streamalchemy.apply import applier

log = logging.getLogger("streamalchemy.daemon")

CONFIRM_WINDOW = 5.0  # seconds a start waits for FFmpeg's first progress report
RESTORE_PARALLEL = 64  # FFmpeg processes starting at once during a restore
WRITE_RETRY = 2.0  # seconds between retries of a state write that failed


Results = dict[str, dict[str, str]]


@dataclass(frozen=True)
class StopResult:
    """What a stop did: the names stopped, those unknown, and a state write that failed."""

    stopped: list[str]
    unknown: list[str]
    write_error: str | None = None

    def reply(self) -> Reply:
        if self.write_error is not None:
            return 500, {
                "success": False,
                "message": f"stopped {', '.join(self.stopped)}, but {self.write_error}; "
                "they will not be restored, and the write is retried",
                "stopped": self.stopped,
            }
        if self.unknown:
            done = f" (stopped: {', '.join(self.stopped)})" if self.stopped else ""
            return 404, {
                "success": False,
                "message": f"no such stream: {', '.join(self.unknown)}{done}",
                "stopped": self.stopped,
            }
        return 200, {"success": True, "stopped": self.stopped}


async def _all_done(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` together and wait for every one; then raise the first error, if any."""
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


@dataclass
class _Snapshot:
    """The state file as a restore last read it, and its version just before that read."""

    version: object
    saved: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Request:
    """One HTTP request as a handler sees it: ``params`` are the path pattern's fields."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any]


class Controller:
    """The daemon's decisions: what each request does to the streams and the state file.

    One owner per name: every start, stop, restart, restore and apply of a name runs
    under that name's lock (``owning``), so a command that meets another on the same
    name waits its turn and then succeeds or fails on its own merits, and a launch
    re-checks, at the moment it starts, that the stream is still wanted and not
    running. The public API that everything goes through: ``start_spec``,
    ``stop_names``, ``restart_name`` and ``restore``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = StateStore(
            settings.state_file,
            backup_count=settings.backup_count,
            enabled=settings.persistence_enabled,
        )
        self.writer = StateWriter(self.store)
        self.children = ChildRecord(settings.data_dir / "children.json")
        self.supervisor = Supervisor(
            record=self.children,
            log_dir=settings.log_dir,
            stall_timeout=settings.stall_timeout,
            on_end=self._on_end,
            log_max_bytes=settings.log_max_bytes,
            log_backups=settings.log_backups,
            live_restore=settings.live_restore,
        )
        self.started = time.time()
        self.metrics = Metrics.of(self)
        self.not_restored: dict[str, str] = {}  # saved streams left out, and why
        self.shutdown = asyncio.Event()
        self.choose_encoder = encoders.Chooser(settings.ffmpeg, settings.data_dir)
        self.check_source: Callable[[StreamSpec, str], None] = check_source
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._restoring: asyncio.Task[Results] | None = None
        self._retrying: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.inputs = InputSockets(settings.socket.parent / "in")
        self.shedder = Shedder(self, settings.shed_after, settings.data_dir / SIDE_FILE)

    # -- one owner per name --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def owning(self, name: str) -> AsyncIterator[None]:
        """Hold ``name``'s lifecycle: the caller is the only one starting or stopping it."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name], self._locks[name]

    def _active(self, name: str) -> Stream | None:
        stream = self.supervisor.streams.get(name)
        return stream if stream is not None and stream.active else None

    def _kept(self) -> set[str]:
        """The names that run, or are shed (saved, waiting for room): not to restore."""
        return {n for n, s in self.supervisor.streams.items() if s.active or s.status == SHED}

    def _secrets(self, spec: StreamSpec) -> StreamSpec:
        """``spec`` with its ${NAME} references resolved (CredentialError, exit 2, if not)."""
        return resolve_spec(spec, self.settings.config_file.parent)

    def _missing_credentials(self, spec: StreamSpec) -> str | None:
        return unresolved([spec.source, spec.output], self.settings.config_file.parent)

    def _launch(
        self, spec: StreamSpec, saved_at: float, encoder: str, survivor: Survivor | None = None
    ) -> Stream:
        """Start supervising ``spec`` (adopting ``survivor``, the FFmpeg a previous daemon
        left for it); the caller owns the name and has checked it is free."""
        if self._active(spec.name) is not None:  # never a second FFmpeg for a name
            raise StreamExists(f"stream {spec.name!r} is already running")
        target = output_target(spec, self.settings.rtsp_url, self.settings.hls_dir)
        real = self._secrets(spec)
        real_target = output_target(real, self.settings.rtsp_url, self.settings.hls_dir)
        # Known before FFmpeg says a word: hidden in every reply and log line from now on.
        config_dir = self.settings.config_file.parent
        found = resolved_values([spec.source, spec.output], config_dir)
        remember(spec_secrets([real.source, real.output], found))
        # A source with any secret reaches FFmpeg through a private socket, not argv.
        secret_source = spec.source_type == "rtsp" and has_secret(spec.source)
        input_socket = self.inputs.open(spec.name, input_script(real)) if secret_source else None

        def argv_for(current: str, remaining: float | None) -> list[str]:
            # Built per spawn: a restarted recording writes the next numbered file.
            return build_argv(
                real,
                ffmpeg=self.settings.ffmpeg,
                encoder=encoder,
                # A URL output's ${NAME} resolved; a numbered file as the supervisor chose.
                target=real_target if current == target else current,
                # Reports often enough that a healthy stream never looks stalled.
                stats_period=min(STATS_PERIOD, self.settings.stall_timeout / 2),
                input_socket=input_socket,
                time_limit=remaining,
            )

        log.info(
            "%s %s -> %s",
            "adopting" if survivor else "starting",
            spec.name,
            mask_credentials(target),
        )
        self.not_restored.pop(spec.name, None)
        self.shedder.start()
        return self.supervisor.launch(
            spec,
            saved_at=saved_at,
            encoder=encoder,
            target=target,
            argv_for=argv_for,
            survivor=survivor,
        )

    async def _stop_stream(self, name: str, reason: str) -> None:
        if name in self.supervisor.streams:
            await self.supervisor.stop(name, reason)
        self.inputs.close(name)

    def _on_end(self, stream: Stream) -> None:
        log.info("%s %s: %s", stream.spec.name, stream.status, stream.last_error or "done")
        if stream.status == "finished":
            # Ended by itself (duration reached or a clean exit): nothing to bring back.
            self._spawn(self._forget_finished(stream))
        if not stream.active and self.supervisor.streams.get(stream.spec.name) in (stream, None):
            self.inputs.close(stream.spec.name)  # not a newer start's source

    async def _forget_finished(self, stream: Stream) -> None:
        name = stream.spec.name
        async with self.owning(name):
            if self.supervisor.streams.get(name) is not stream:
                return  # started again meanwhile: that run is saved
            with contextlib.suppress(StateFileError):  # status shows it; retried below
                await self.writer.remove(name)
        self._keep_retrying()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _keep_retrying(self) -> None:
        """After a failed write, retry until the pending removals are written."""
        if self.writer.pending and (self._retrying is None or self._retrying.done()):
            self._retrying = asyncio.create_task(self._retry_writes())

    async def _retry_writes(self) -> None:
        while self.writer.pending:
            await asyncio.sleep(WRITE_RETRY)
            try:
                await self.writer.flush()
            except StateFileError as exc:
                log.debug("state file still not writable: %s", exc)
            else:
                if self.writer.ok:
                    log.info("the state file is writable again; pending removals written")

    # -- the lifecycle API: everything that starts or stops a stream goes through here

    async def start_spec(
        self,
        spec: StreamSpec,
        *,
        replace: bool = False,
        overwrite: bool = False,
        saved_at: float | None = None,
    ) -> Stream:
        """Start ``spec`` and save it: all or nothing.

        Waits for any other command on the name. Raises StreamExists if the name runs
        and ``replace`` is false. If FFmpeg fails, or the stream cannot be saved, its
        FFmpeg is stopped, a replaced stream runs again, and the error says why.
        """
        async with self.owning(spec.name):
            return await self._start(spec, replace=replace, overwrite=overwrite, saved_at=saved_at)

    async def _start(
        self,
        spec: StreamSpec,
        *,
        replace: bool,
        saved_at: float | None,
        overwrite: bool = False,
        numbered: bool = False,
    ) -> Stream:
        """``numbered``: a file output that exists is not refused, the stream goes on into
        its next numbered file (as ``saved_at`` does: a restart, an apply)."""
        name = spec.name
        self._secrets(spec)  # an unresolvable ${NAME} is refused before anything changes
        previous = self._active(name)
        if previous is None and not replace and name in self._kept():
            raise StreamExists(f"stream {name!r} already exists (shed); use --replace or stop it")
        if previous is not None and not replace:
            raise StreamExists(
                f"stream {name!r} already exists (pid {previous.pid}); "
                "use --replace or stop it first"
            )
        refuse = saved_at is None and not numbered
        # A new name's file is probed while its FFmpeg starts (which reads the same file):
        # a start waits for the longer of the two, not their sum. A replacement is probed
        # first, so that a bad file never stops the stream it was to replace, and so is
        # an --overwrite, so that a bad source never deletes the old recording.
        checking = asyncio.create_task(
            asyncio.to_thread(self.check_source, spec, self.settings.ffprobe)
        )
        try:
            is_file = spec.output.startswith("/")
            replacing_file = refuse and overwrite and is_file and os.path.lexists(spec.output)
            if previous is not None or replacing_file:
                await checking
            else:
                check_file(spec)  # missing or unreadable: refused before anything starts
            if refuse:
                refuse_existing_file(spec.output, overwrite)
            encoder = await self.choose_encoder.choose_async(spec)
        except Exception:
            await checking  # the source's own error, if it has one, comes first
            raise
        try:
            await self._stop_stream(name, REPLACED)
            stream = self._launch(spec, time.time() if saved_at is None else saved_at, encoder)
        except BaseException:
            checking.cancel()  # its verdict no longer matters
            raise
        try:
            await checking
        except Exception as exc:
            await self._stop_stream(name, f"not started: {exc}")
            raise
        failure = await stream.confirmed(CONFIRM_WINDOW)
        if failure is None:
            try:
                await self.writer.save(name, new_entry(spec.to_config(), stream.saved_at))
            except StateFileError as exc:
                failure = f"it could not be saved, so its FFmpeg was stopped: {exc}"
            else:
                self.children.flush()  # recorded, as saved, before the start answers
                return stream
        else:
            failure = f"FFmpeg failed to start: {failure}"
        await self._stop_stream(name, failure)
        message = f"{name}: {failure}"
        if previous is not None:
            # As a bad configuration reload leaves the old one serving: what runs
            # stays what the state file says.
            self._launch(previous.spec, previous.saved_at, previous.encoder)
            message += "; the stream it was to replace runs again"
        raise OperationFailed(message)

    async def stop_names(self, names: list[str]) -> StopResult:
        """Stop each name (known to the daemon or saved) and remove it from the state file.

        The process is always stopped; a removal that cannot be written is reported
        in ``write_error``, kept pending (a restore or the next launch will not bring
        the stream back) and retried.
        """
        saved = await self.writer.load()
        names = list(dict.fromkeys(names))
        stopped: list[str] = []
        errors: list[str] = []

        async def stop_one(name: str) -> None:
            async with self.owning(name):
                # Known now, or saved before we waited: a start we waited for counts too.
                if name not in self.supervisor.streams and name not in saved:
                    return
                await self._stop_stream(name, USER_STOP)
                self.not_restored.pop(name, None)
                stopped.append(name)
                log.info("stopped %s", name)
                try:
                    await self.writer.remove(name)
                except StateFileError as exc:
                    errors.append(str(exc))

        await _all_done([stop_one(n) for n in names])
        if errors:
            self._keep_retrying()
        stopped.sort(key=names.index)
        unknown = [n for n in names if n not in stopped]
        return StopResult(stopped, unknown, errors[0] if errors else None)

    async def stop_all(self) -> StopResult:
        saved = await self.writer.load()
        return await self.stop_names(sorted(set(self.supervisor.streams) | set(saved)))

    async def restart_name(self, name: str) -> Stream:
        """Stop ``name`` and start it again with its saved spec; its deadline is kept.

        Waits for any other command on the name. A restart whose FFmpeg fails leaves
        the stream saved and retrying under its restart policy, as after a restore.
        """
        name = validate_name(name)
        async with self.owning(name):
            entry = (await self.writer.load()).get(name)
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
                raise OperationFailed(
                    f"{name}: its duration has ended; start it again to run it anew"
                )
            await asyncio.to_thread(self.check_source, spec, self.settings.ffprobe)
            encoder = await self.choose_encoder.choose_async(spec)
            self._secrets(spec)  # a ${NAME} gone since the start: refused, still running
            previous = self.supervisor.streams.get(name)
            await self._stop_stream(name, USER_RESTART)
            stream = self._launch(spec, saved_at, encoder)
            if previous is not None:  # show keeps the history across the user's restart
                stream.exits.extendleft(reversed(previous.exits))
            failure = await stream.confirmed(CONFIRM_WINDOW)
        self.children.flush()
        if failure is not None:
            raise OperationFailed(f"{name}: FFmpeg failed to start again: {failure}")
        log.info("restarted %s", name)
        return stream

    async def restore(self, dry_run: bool = False) -> Results:
        """Restore every saved stream not running; overlapping restores share one run."""
        if dry_run:
            saved = await self.writer.load()
            await self._encoders_for(saved)
            return dry_run_results(
                self.shedder.restore_plan(
                    plan(
                        saved,
                        running=self._kept(),
                        choose_encoder=self.choose_encoder,
                        credentials_missing=self._missing_credentials,
                    )
                )
            )
        if self._restoring is None or self._restoring.done():
            self._restoring = asyncio.create_task(self._restore(), name="restore")
        return await asyncio.shield(self._restoring)

    async def _encoders_for(self, saved: dict[str, dict[str, Any]]) -> None:
        """Probe the encoders off the loop, unless every saved stream is a copy."""
        codecs = {str(e.get("config", {}).get("video_codec", "h264")) for e in saved.values()}
        if codecs - {"copy"}:
            await self.choose_encoder.ready()

    async def _restore(self) -> Results:
        # The file as this restore read it, and how it looked before: a launch re-reads
        # it only when it changed since (a stat, not a read, per stream).
        snapshot = _Snapshot(self.store.version(), {})
        snapshot.saved = saved = await self.writer.load()
        await self._encoders_for(saved)
        steps = plan(
            saved,
            running=self._kept(),
            choose_encoder=self.choose_encoder,
            credentials_missing=self._missing_credentials,
        )
        steps = self.shedder.restore_plan(steps)
        results = {s.name: {"result": s.result, "reason": s.reason} for s in steps}
        slots = asyncio.Semaphore(RESTORE_PARALLEL)

        async def settle(step: Step) -> None:
            if step.result == "restored":
                async with slots, self.owning(step.name):
                    step = await self._replan(step.name, snapshot)
                    if step.result == "restored":
                        results[step.name] = await self._restore_one(step)
                        return
            results[step.name] = {"result": step.result, "reason": step.reason}
            if step.result == "skipped" and step.spec is not None:  # held back: shed
                async with self.owning(step.name):
                    self.shedder.hold(step)
            if step.expired:
                async with self.owning(step.name):
                    if self._active(step.name) is None:
                        with contextlib.suppress(StateFileError):
                            await self.writer.remove(step.name)
                self.not_restored.pop(step.name, None)
            else:
                self.not_restored[step.name] = step.reason
            log.info("restore %s: %s (%s)", step.name, step.result, step.reason)
            self.supervisor.note(step.name, f"restore {step.result}: {step.reason}")

        outcomes = await asyncio.gather(*(settle(s) for s in steps), return_exceptions=True)
        for step, outcome in zip(steps, outcomes, strict=True):
            if isinstance(outcome, BaseException):  # nothing escapes: it is that stream's failure
                log.error("restore %s: %s", step.name, outcome)
                results[step.name] = {"result": "failed", "reason": str(outcome)}
        self.children.flush()
        self._keep_retrying()
        self.metrics.count_restore(results)
        return results

    async def _replan(self, name: str, snapshot: _Snapshot) -> Step:
        """Plan ``name`` again now that it is ours: it may have been stopped or started."""
        version = self.store.version()
        if version != snapshot.version:
            snapshot.saved = await self.writer.load()
            snapshot.version = version
        entry = snapshot.saved.get(name)
        if entry is None:
            return Step(name, "skipped", "no longer saved (stopped meanwhile)")
        running = {name} & self._kept()
        return plan(
            {name: entry},
            running=running,
            choose_encoder=self.choose_encoder,
            credentials_missing=self._missing_credentials,
        )[0]

    async def _restore_one(self, step: Step) -> dict[str, str]:
        assert step.spec is not None
        stream = self._launch(step.spec, step.saved_at, step.encoder)
        failure = await stream.confirmed(CONFIRM_WINDOW)
        # A failure leaves the stream saved, retrying under its restart policy.
        result = (
            {"result": "failed", "reason": failure}
            if failure
            else {
                "result": "restored",
                "reason": "started",
            }
        )
        log.info("restore %s: %s", step.name, result["reason"])
        return result

    async def restore_at_launch(
        self, survivors: dict[str, Survivor] | None = None, restore: bool = True
    ) -> None:
        """Adopt what a previous daemon left running (live restore), then restore the rest."""
        if survivors:
            await self.adopt(survivors)
        if restore:
            await self.restore(dry_run=False)

    async def adopt(self, survivors: dict[str, Survivor]) -> None:
        """Take over each saved stream's FFmpeg that a previous daemon left, running or
        ended (then handled as its exit); stop the ones whose stream is not saved: the
        state file decides what runs."""
        saved = await self.writer.load() if self.store.enabled else {}
        strays: list[Survivor] = []
        for name, survivor in survivors.items():
            view = read_saved(name, saved[name]) if name in saved else None
            encoder = str(survivor.record.get("encoder") or "")
            if view is None or view.spec is None or not encoder:
                strays.append(survivor)
                continue
            async with self.owning(name):
                try:
                    self._launch(view.spec, view.saved_at, encoder, survivor=survivor)
                except StreamAlchemyError as exc:  # e.g. a ${NAME} gone: the restore reports it
                    log.warning("%s: not adopted: %s", name, exc)
                    strays.append(survivor)
        for survivor in strays:
            if survivor.alive:
                log.warning("stopping %s (pid %d): not saved", survivor.name, survivor.process.pid)
                self.supervisor.note(
                    survivor.name,
                    f"stopped FFmpeg (pid {survivor.process.pid}) left by a previous daemon: "
                    "the stream is not saved",
                )
        await asyncio.gather(
            *(procs.stop(s.process, self.supervisor.grace) for s in strays if s.alive)
        )
        for survivor in strays:
            survivor.forget()
        self.children.flush()

    async def close(self) -> None:
        """Stop every FFmpeg (the streams stay saved) and try once more any pending write."""
        for task in (self._restoring, self._retrying, *self._background):
            if task is not None:
                task.cancel()
        await self.shedder.close()
        await self.supervisor.stop_all()
        self.inputs.close_all()
        if self.writer.pending:
            with contextlib.suppress(StateFileError):
                await self.writer.flush()
        self.writer.close()

    # -- reports -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "success": True,
            "pid": os.getpid(),
            "version": __version__,
            "uptime_seconds": time.time() - self.started,
            "socket": str(self.settings.socket),
            "state_file": str(self.settings.state_file),
            "persistence_enabled": self.store.enabled,
            "live_restore": self.settings.live_restore,
            "streams": sum(1 for s in self.supervisor.streams.values() if s.active),
            "log_dir": str(self.settings.log_dir),
            "ffmpeg": self.settings.ffmpeg,
            "state_write_ok": self.store.write_error is None,
            "state_write_error": self.store.write_error,
            # Which home and which installation answer: a second install's CLI
            # would otherwise drive this daemon without knowing it.
            "home": str(self.settings.data_dir),
            "install_path": os.path.dirname(os.path.abspath(streamalchemy.__file__)),
        }

    async def list_streams(self) -> dict[str, Any]:
        saved = await self.writer.load()
        active = self._kept()
        not_running = {
            name: self.not_restored.get(name, "not started since the daemon launched")
            for name in sorted(saved)
            if name not in active
        }
        return {
            "success": True,
            "streams": [
                {**s.snapshot(), "saved": n in saved}
                for n, s in sorted(self.supervisor.streams.items())
            ],
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

    async def details(self, name: str) -> Reply:
        """``show NAME``: a stream the supervisor has, or a saved one that does not run."""
        name = validate_name(name)
        stream = self.supervisor.streams.get(name)
        saved = await self.writer.load()
        if stream is not None:
            doc = running_details({**stream.snapshot(), "saved": name in saved}, stream.spec)
            return 200, dict(doc)
        entry = saved.get(name)
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

    async def route_details(self, req: Request) -> Reply:
        return await self.details(req.params["name"])

    # -- routes: one handler per (method, path pattern) of ROUTES --------------------

    async def route_status(self, req: Request) -> Reply:
        return 200, self.status()

    async def route_metrics(self, req: Request) -> TextReply:
        return self.metrics.reply()

    async def route_shutdown(self, req: Request) -> Reply:
        asyncio.get_running_loop().call_later(0.05, self.shutdown.set)
        return 200, {"success": True, "message": "shutting down", "pid": os.getpid()}

    async def route_list(self, req: Request) -> Reply:
        return 200, await self.list_streams()

    async def route_start(self, req: Request) -> Reply:
        return await self.start(req.body)

    async def start(self, body: dict[str, Any]) -> Reply:
        """``POST /streams``: the request-shaped form of ``start_spec``."""
        spec = spec_from_request(body)
        flags = {key: body.get(key, False) for key in ("replace", "overwrite")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise InvalidInput(f"{key} must be true or false, not {value!r}")
        stream = await self.start_spec(spec, replace=flags["replace"], overwrite=flags["overwrite"])
        return 200, {"success": True, "stream": stream.snapshot()}

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

    async def stop(self, names: list[str], all_streams: bool) -> Reply:
        """``POST /stop``: the request-shaped form of ``stop_names`` and ``stop_all``."""
        result = await (self.stop_all() if all_streams else self.stop_names(names))
        return result.reply()

    async def restart(self, name: str) -> Reply:
        """``POST /streams/NAME/restart``: the request-shaped form of ``restart_name``."""
        stream = await self.restart_name(name)
        return 200, {"success": True, "restarted": [name], "stream": stream.snapshot()}

    async def route_restart(self, req: Request) -> Reply:
        return await self.restart(req.params["name"])

    async def route_logs(self, req: Request) -> Reply:
        # A log of up to its size cap is read in a thread, off the event loop.
        return await asyncio.to_thread(self.logs, req.params["name"], req.query.get("lines", "50"))

    async def route_saved(self, req: Request) -> Reply:
        saved = await self.writer.load()
        return 200, {"success": True, "streams": saved, "enabled": self.store.enabled}

    async def route_clear(self, req: Request) -> Reply:
        await self.writer.clear()
        return 200, {"success": True, "message": "All persistent streams cleared"}

    async def route_restore(self, req: Request) -> Reply:
        results = await self.restore(req.body.get("dry_run") is True)
        return 200, {
            "success": all(r["result"] != "failed" for r in results.values()),
            "message": "Stream restoration triggered",
            "results": results,
        }

    async def route_apply(self, req: Request) -> Reply:
        from streamalchemy.apply import applier  # apply's modules: not on every launch's path

        return await applier.handle_request(self.apply_ops(), req.body)

    def apply_ops(self) -> applier.Ops:
        """An apply's steps go through the lifecycle API: each waits its turn on its name."""

        async def start(spec: StreamSpec, update: bool) -> object:
            async with self.owning(spec.name):
                current = self._active(spec.name)
                if current is not None and current.spec == spec:
                    return current  # started meanwhile as the file says: nothing to do
                # An update keeps the stream's deadline, as a restart does, and a file
                # output goes on into its next numbered file instead of being refused.
                saved_at = None
                if update and current is not None:
                    saved_at = current.saved_at
                elif update and (entry := (await self.writer.load()).get(spec.name)):
                    saved_at = float(entry["saved_at"])
                return await self._start(spec, replace=True, saved_at=saved_at, numbered=True)

        async def stop(name: str) -> object:
            result = await self.stop_names([name])
            if result.write_error is not None:
                raise OperationFailed(f"stopped, but {result.write_error}; the write is retried")
            return result

        def running() -> dict[str, StreamSpec]:
            return {n: s.spec for n, s in self.supervisor.streams.items() if n in self._kept()}

        from streamalchemy.apply import applier

        return applier.Ops(start, stop, self.writer.load, running)

    # -- dispatch ----------------------------------------------------------------

    async def handle(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> Reply | TextReply:
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


Handler = Callable[[Controller, Request], Awaitable[Reply | TextReply]]

# (method, path pattern, handler); ``{field}`` matches one path segment and reaches
# the handler as ``req.params[field]``. Add a route with one line here.
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/status", Controller.route_status),
    ("GET", "/metrics", Controller.route_metrics),
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
    ("POST", "/apply", Controller.route_apply),
]


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    fields = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern))
    return re.compile(fields)
