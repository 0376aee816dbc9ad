"""The daemon: one per home, answering the HTTP API on its socket and owning the streams.

Requests are decided here; the supervisor carries them out and the state store
records them. Every start that answers success is in the state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO, Any

from streamalchemy import __version__, encoders, mediamtx, systemd
from streamalchemy.errors import (
    InvalidInput,
    OperationFailed,
    StreamAlchemyError,
    StreamExists,
    StreamNotFound,
)
from streamalchemy.ffmpeg import STATS_PERIOD, build_argv, output_target
from streamalchemy.httpserver import Reply, TextReply, connection_handler
from streamalchemy.metrics import DaemonFigures, Metrics, listen
from streamalchemy.persist import StateStore, new_entry
from streamalchemy.procs import ChildRecord
from streamalchemy.restore import Step, dry_run_results, plan
from streamalchemy.settings import Settings
from streamalchemy.sources import check_source
from streamalchemy.spec import StreamSpec, mask_credentials, spec_from_request, validate_name
from streamalchemy.supervisor import Stream, Supervisor

log = logging.getLogger("streamalchemy.daemon")

CONFIRM_WINDOW = 5.0  # seconds a start waits for FFmpeg's first progress report
RESTORE_PARALLEL = 16  # FFmpeg processes starting at once during a restore


class Daemon:
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
        )
        self.started = time.time()
        self.not_restored: dict[str, str] = {}  # saved streams left out, and why
        self.restore_counts = {"restored": 0, "skipped": 0, "failed": 0}  # for the metrics
        self.shutdown = asyncio.Event()
        self._busy: set[str] = set()
        self.choose_encoder = encoders.Chooser(settings.ffmpeg, settings.data_dir)
        self.metrics = Metrics(
            lambda: [s.snapshot() for s in self.supervisor.streams.values()],
            lambda: DaemonFigures(
                started=self.started,
                restore_results=self.restore_counts,
                state_writes=self.store.writes,
                state_write_errors=self.store.write_errors,
            ),
        )

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
        if spec.output == "hls":
            Path(target).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = build_argv(
            spec,
            ffmpeg=self.settings.ffmpeg,
            encoder=encoder,
            target=target,
            # Reports often enough that a healthy stream never looks stalled.
            stats_period=min(STATS_PERIOD, self.settings.stall_timeout / 2),
        )
        log.info("starting %s -> %s", spec.name, mask_credentials(target))
        self.not_restored.pop(spec.name, None)
        return self.supervisor.launch(
            spec, saved_at=saved_at, encoder=encoder, argv=argv, target=target
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
        with self._reserve([spec.name]):
            current = self.supervisor.streams.get(spec.name)
            if current is not None and current.active and not replace:
                raise StreamExists(
                    f"stream {spec.name!r} already exists (pid {current.pid}); "
                    "use --replace or stop it first"
                )
            await asyncio.to_thread(check_source, spec, self.settings.ffprobe)
            encoder = self.choose_encoder(spec)
            previous = current if current is not None and current.active else None
            if current is not None:
                await self.supervisor.stop(spec.name)
            stream = self._launch(spec, time.time(), encoder)
            failure = await stream.confirmed(CONFIRM_WINDOW)
            if failure is not None:
                await self.supervisor.stop(spec.name)
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
        for result in results.values():
            self.restore_counts[result["result"]] += 1
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

    async def handle(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> Reply | TextReply:
        try:
            return await self._route(method, path, query, body)
        except StreamAlchemyError as exc:
            return exc.http_status, {"success": False, "message": str(exc)}
        except Exception as exc:  # a bug must not take the daemon down
            log.exception("error handling %s %s", method, path)
            return 500, {"success": False, "message": f"daemon error: {exc}"}

    async def _route(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> Reply | TextReply:
        parts = path.strip("/").split("/")
        match method, parts:
            case "GET", ["status"]:
                return 200, self.status()
            case "GET", ["metrics"]:
                return self.metrics.reply()
            case "POST", ["shutdown"]:
                asyncio.get_running_loop().call_later(0.05, self.shutdown.set)
                return 200, {"success": True, "message": "shutting down", "pid": os.getpid()}
            case "GET", ["streams"]:
                return 200, self.list_streams()
            case "POST", ["streams"]:
                return await self.start(body)
            case "GET", ["streams", name]:
                stream = self.supervisor.streams.get(name)
                if stream is None:
                    raise StreamNotFound(f"no such stream: {name}")
                return 200, {"success": True, "stream": stream.snapshot()}
            case "DELETE", ["streams", name]:
                return await self.stop([name], False)
            case "POST", ["stop"]:
                names = body.get("names", [])
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise InvalidInput("names must be a list of stream names")
                return await self.stop(names, body.get("all") is True)
            case "GET", ["streams", name, "logs"]:
                return self.logs(name, query.get("lines", "50"))
            case "GET", ["persistent_streams"]:
                return 200, {
                    "success": True,
                    "streams": self.store.load(),
                    "enabled": self.store.enabled,
                }
            case "POST", ["clear_persistent_streams"]:
                self.store.clear()
                return 200, {"success": True, "message": "All persistent streams cleared"}
            case "POST", ["restore_streams"]:
                results = await self.restore(body.get("dry_run") is True)
                return 200, {
                    "success": all(r["result"] != "failed" for r in results.values()),
                    "message": "Stream restoration triggered",
                    "results": results,
                }
        return 404, {"success": False, "message": f"no such endpoint: {method} {path}"}


# -- process lifecycle -------------------------------------------------------------


def _hold_instance_lock(data_dir: Path) -> IO[str]:
    """One daemon per home: a second one names the pid of the first and gives up."""
    lock = (data_dir / "daemon.pid").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "unknown"
        lock.close()
        raise OperationFailed(f"a daemon is already running for this home (pid {pid})") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _bind(path: Path) -> socket.socket:
    """Bind the control socket (0600 in a 0700 directory), replacing only a dead one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() or path.is_symlink():
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a daemon that died: nobody answers on it
            else:
                raise OperationFailed(f"another daemon is answering on {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return sock


def _setup_logging(log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = RotatingFileHandler(log_dir / "daemon.log", maxBytes=1 << 20, backupCount=3)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(fmt)
    root = logging.getLogger("streamalchemy")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(console)


async def _serve(settings: Settings, restore: bool) -> None:
    if sys.version_info < (3, 12):
        # The default watcher starts a thread per child; pidfds cost one fd each.
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    daemon = Daemon(settings)
    killed = daemon.supervisor.record.reap_leftovers()
    if killed:
        log.warning("ended %d FFmpeg process(es) left by a previous daemon", len(killed))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.shutdown.set)
    # A metrics address that cannot be used stops the launch before anything starts.
    metrics_server = (
        await listen(daemon.metrics, settings.metrics_addr) if settings.metrics_addr else None
    )
    # Up before the daemon answers or restores: RTSP streams find their server running.
    rtsp_server = await mediamtx.start_if_needed(settings)
    server = await asyncio.start_unix_server(
        connection_handler(daemon.handle), sock=_bind(settings.socket)
    )
    log.info("daemon %s listening on %s (pid %d)", __version__, settings.socket, os.getpid())
    systemd.notify("READY=1")
    restoring = None
    if restore and daemon.store.enabled:
        restoring = asyncio.create_task(daemon.restore_at_launch())
    await daemon.shutdown.wait()
    log.info("shutting down: stopping %d stream(s)", len(daemon.supervisor.streams))
    systemd.notify("STOPPING=1")
    server.close()
    if metrics_server is not None:
        metrics_server.close()
    if restoring is not None and not restoring.done():
        restoring.cancel()
    await daemon.supervisor.stop_all()
    if rtsp_server is not None:
        await rtsp_server.stop()
    with contextlib.suppress(FileNotFoundError):
        settings.socket.unlink()
    log.info("daemon stopped")


def run(settings: Settings, restore: bool = True) -> None:
    """Run the daemon in the foreground until SIGTERM, SIGINT or ``POST /shutdown``."""
    # Logs, the children record (FFmpeg argv with source credentials) and outputs
    # are the user's alone, as the state file is.
    os.umask(0o077)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _hold_instance_lock(settings.data_dir)
    _setup_logging(settings.log_dir)
    try:
        asyncio.run(_serve(settings, restore))
    finally:
        lock.close()
