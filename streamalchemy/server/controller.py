"""The daemon's decisions: the per-name lifecycle of every stream.

One owner per name (``Controller.owning``): every start, stop, restart, restore and
apply step of a name runs under that name's lock. The controller is given its parts
(state store, child record, supervisor, encoder chooser, source check, input sockets);
``Controller.from_settings`` builds the real ones. A restore is carried out by
``server.restoring`` through this lifecycle. Nothing here parses HTTP requests
(that is ``server.routes``), binds sockets, handles signals or sets up logging (that is
``daemon``); the supervisor carries the decisions out and the state store records them.
Every start that answers success is in the state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamalchemy import encoders
from streamalchemy.core import outputs
from streamalchemy.core.masking import has_secret, remember, spec_secrets
from streamalchemy.core.saved import expired, read_saved, to_config
from streamalchemy.core.spec import StreamSpec, mask_credentials, validate_name
from streamalchemy.errors import OperationFailed, StateFileError, StreamExists, StreamNotFound
from streamalchemy.persist import StateStore, StateWriter, new_entry
from streamalchemy.server import restoring
from streamalchemy.server.inputsockets import InputSockets
from streamalchemy.server.metrics import Metrics
from streamalchemy.server.references import resolve_spec, resolved_values, unresolved
from streamalchemy.server.restoring import Results
from streamalchemy.server.shedder import SIDE_FILE, Shedder
from streamalchemy.settings import Settings
from streamalchemy.supervision.ffmpeg import STATS_PERIOD, build_argv, input_script
from streamalchemy.supervision.procs import ChildRecord
from streamalchemy.supervision.recordings import OldFile
from streamalchemy.supervision.sources import check_file, check_source
from streamalchemy.supervision.streamlog import LogSweeper
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
WRITE_RETRY = 2.0  # seconds between retries of a state write that failed


@dataclass(frozen=True)
class Stopped:
    """What a stop did: the names stopped, those unknown, and a state write that failed."""

    stopped: list[str]
    unknown: list[str]
    write_error: str | None = None


async def _all_done(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` together and wait for every one; then raise the first error, if any."""
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


class Controller:
    """The daemon's decisions: what each request does to the streams and the state file.

    One owner per name: every start, stop, restart, restore and apply of a name runs
    under that name's lock (``owning``), so a command that meets another on the same
    name waits its turn and then succeeds or fails on its own merits, and a launch
    re-checks, at the moment it starts, that the stream is still wanted and not
    running. The public API that everything goes through: ``start_spec``,
    ``stop_names``, ``restart_name`` and ``restore``.
    """

    confirm_window = CONFIRM_WINDOW

    def __init__(
        self,
        settings: Settings,
        *,
        store: StateStore,
        children: ChildRecord,
        supervise: Callable[[Callable[[Stream], None]], Supervisor],
        choose_encoder: encoders.Chooser,
        check_source: Callable[[StreamSpec, str], None],
        inputs: InputSockets,
    ) -> None:
        """``supervise`` makes the supervisor, given the callback for a stream that ends."""
        self.settings = settings
        self.store = store
        self.writer = StateWriter(store)
        self.children = children
        self.supervisor = sup = supervise(self._on_end)
        self.sweep = LogSweeper(sup.log_dir, self.writer.load, sup.streams.keys)
        self.started = time.time()
        self.metrics = Metrics.of(store, self.started, lambda: self.supervisor.streams.values())
        self.not_restored: dict[str, str] = {}  # saved streams left out, and why
        self.shutdown = asyncio.Event()
        # Set by the daemon: checks the installed code, then replaces the daemon with it.
        self.restart_daemon: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.choose_encoder = choose_encoder
        self.check_source = check_source
        self.inputs = inputs
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._restoring: asyncio.Task[Results] | None = None
        self._retrying: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.shedder = Shedder(self, settings.shed_after, settings.data_dir / SIDE_FILE)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        supervise: Callable[[Callable[[Stream], None]], Supervisor] | None = None,
        choose_encoder: encoders.Chooser | None = None,
        check_source: Callable[[StreamSpec, str], None] = check_source,
    ) -> Controller:
        """The daemon's controller; a test passes fakes for the parts it replaces."""
        children = ChildRecord(settings.data_dir / "children.json")

        def real_supervisor(on_end: Callable[[Stream], None]) -> Supervisor:
            return Supervisor(
                record=children,
                log_dir=settings.log_dir,
                stall_timeout=settings.stall_timeout,
                on_end=on_end,
                log_max_bytes=settings.log_max_bytes,
                log_backups=settings.log_backups,
                live_restore=settings.live_restore,
            )

        store = StateStore(
            settings.state_file,
            backup_count=settings.backup_count,
            enabled=settings.persistence_enabled,
        )
        return cls(
            settings,
            store=store,
            children=children,
            supervise=supervise or real_supervisor,
            choose_encoder=choose_encoder or encoders.Chooser(settings.ffmpeg, settings.data_dir),
            check_source=check_source,
            inputs=InputSockets(settings.socket.parent / "in"),
        )

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

    def active(self, name: str) -> Stream | None:
        stream = self.supervisor.streams.get(name)
        return stream if stream is not None and stream.active else None

    def kept(self) -> set[str]:
        """The names that run, or are shed (saved, waiting for room): not to restore."""
        return {n for n, s in self.supervisor.streams.items() if s.active or s.status == SHED}

    def _secrets(self, spec: StreamSpec) -> StreamSpec:
        """``spec`` with its ${NAME} references resolved (CredentialError, exit 2, if not)."""
        return resolve_spec(spec, self.settings.config_file.parent)

    def missing_credentials(self, spec: StreamSpec) -> str | None:
        return unresolved([spec.source, spec.output], self.settings.config_file.parent)

    def launch(self, spec: StreamSpec, saved_at: float, encoder: str) -> Stream:
        """Start supervising ``spec``; the caller owns the name and has checked it is free."""
        if self.active(spec.name) is not None:  # never a second FFmpeg for a name
            raise StreamExists(f"stream {spec.name!r} is already running")
        target = spec.target(self.settings.rtsp_url, self.settings.hls_dir)
        real = self._secrets(spec)
        real_target = real.target(self.settings.rtsp_url, self.settings.hls_dir)
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
                time_limit=remaining,  # the deadline holds with no daemon
            )

        log.info("starting %s -> %s", spec.name, mask_credentials(target))
        self.not_restored.pop(spec.name, None)
        self.shedder.start()
        return self.supervisor.launch(
            spec, saved_at=saved_at, encoder=encoder, target=target, argv_for=argv_for
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
        self.keep_retrying()
        self.supervisor.forget_later(stream)
        self.sweep.poke(self._spawn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def keep_retrying(self) -> None:
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
        numbered: bool = False,  # an existing file output: on into the next numbered file
    ) -> Stream:
        name = spec.name
        self._secrets(spec)  # an unresolvable ${NAME} is refused before anything changes
        previous = self.active(name)
        if previous is None and not replace and name in self.kept():
            raise StreamExists(f"stream {name!r} already exists (shed); use --replace or stop it")
        if previous is not None and not replace:
            raise StreamExists(
                f"stream {name!r} already exists (pid {previous.pid}); "
                "use --replace or stop it first"
            )
        refuse = saved_at is None and not numbered
        # A new name's file is probed while its FFmpeg starts (the longer of the two, not
        # their sum); a replacement or an --overwrite first: a bad source never stops the
        # stream it was to replace, nor deletes the old recording.
        checking = asyncio.create_task(
            asyncio.to_thread(self.check_source, spec, self.settings.ffprobe)
        )
        old_file = OldFile()  # an --overwrite's: put back unless the new start runs
        try:
            is_file = outputs.kind_of(spec.output).is_file
            replacing_file = refuse and overwrite and is_file and os.path.lexists(spec.output)
            if previous is not None or replacing_file:
                await checking
            else:
                check_file(spec)  # missing or unreadable: refused before anything starts
            if refuse:
                old_file.refuse_or_set_aside(spec.output, overwrite)
            encoder = await self.choose_encoder.choose_async(spec)
        except Exception:
            old_file.put_back()
            await checking  # the source's own error, if it has one, comes first
            raise
        try:
            await self._stop_stream(name, REPLACED)
            stream = self.launch(spec, time.time() if saved_at is None else saved_at, encoder)
        except BaseException:
            old_file.put_back()
            checking.cancel()  # its verdict no longer matters
            raise
        try:
            await checking
        except Exception as exc:
            await self._stop_stream(name, f"not started: {exc}")
            old_file.put_back()
            raise
        failure = await stream.confirmed(CONFIRM_WINDOW)
        if failure is None:
            try:
                await self.writer.save(name, new_entry(to_config(spec), stream.saved_at))
            except StateFileError as exc:
                failure = f"it could not be saved, so its FFmpeg was stopped: {exc}"
                self.keep_retrying()  # until a write succeeds and the status clears
            else:
                self.children.flush()  # recorded, as saved, before the start answers
                old_file.drop()
                return stream
        else:
            failure = f"FFmpeg failed to start: {failure}"
        await self._stop_stream(name, failure)
        old_file.put_back()
        message = f"{name}: {failure}"
        if previous is not None:
            # As a bad configuration reload leaves the old one serving: what runs
            # stays what the state file says.
            self.launch(previous.spec, previous.saved_at, previous.encoder)
            message += "; the stream it was to replace runs again"
        raise OperationFailed(message)

    async def stop_names(self, names: list[str]) -> Stopped:
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
            self.keep_retrying()
        self.sweep.poke(self._spawn)
        stopped.sort(key=names.index)
        unknown = [n for n in names if n not in stopped]
        return Stopped(stopped, unknown, errors[0] if errors else None)

    async def stop_all(self) -> Stopped:
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
            if expired(saved_at, spec.duration, time.time()):
                raise OperationFailed(
                    f"{name}: its duration has ended; start it again to run it anew"
                )
            await asyncio.to_thread(self.check_source, spec, self.settings.ffprobe)
            encoder = await self.choose_encoder.choose_async(spec)
            self._secrets(spec)  # a ${NAME} gone since the start: refused, still running
            previous = self.supervisor.streams.get(name)
            await self._stop_stream(name, USER_RESTART)
            stream = self.launch(spec, saved_at, encoder)
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
            return await restoring.dry_run(self)
        if self._restoring is None or self._restoring.done():
            self._restoring = asyncio.create_task(restoring.restore(self), name="restore")
        return await asyncio.shield(self._restoring)

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

    def apply_ops(self) -> applier.Ops:
        """An apply's steps go through the lifecycle API: each waits its turn on its name."""

        async def start(spec: StreamSpec, update: bool) -> object:
            async with self.owning(spec.name):
                current = self.active(spec.name)
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
            return {n: s.spec for n, s in self.supervisor.streams.items() if n in self.kept()}

        from streamalchemy.apply import applier

        return applier.Ops(start, stop, self.writer.load, running)
