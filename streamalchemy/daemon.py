"""The daemon process: one per home; binds its socket, logs, serves, handles signals.

What each request does is decided by ``controller.Controller``; this module only
runs it: the instance lock, the control socket, logging, the serve loop, the
graceful shutdown on SIGTERM, SIGINT or ``POST /shutdown``, and the restart in
place on SIGHUP or ``POST /restart`` (the process image is replaced by the code
installed now, same pid, the listening sockets handed over: ``handover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from streamalchemy import __version__, home
from streamalchemy.core.masking import mask_record
from streamalchemy.deploy import systemd
from streamalchemy.errors import OperationFailed, StateFileError
from streamalchemy.server import handover, routes
from streamalchemy.server.controller import Controller
from streamalchemy.server.handover import Handover
from streamalchemy.server.httpserver import BACKLOG, CONTROL, PUBLIC, connection_handler
from streamalchemy.server.metrics import listen
from streamalchemy.server.restoring import at_launch
from streamalchemy.settings import Settings
from streamalchemy.supervision import mediamtx, procs
from streamalchemy.supervision.streamlog import CappedHandler

log = logging.getLogger("streamalchemy.daemon")

# ``daemon run --apply FILE [--shard I/N]``: the file, and the shard (None: every stream).
ApplyOption = tuple[Path, tuple[int, int] | None] | None
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# -- process lifecycle -------------------------------------------------------------


def _hold_instance_lock(data_dir: Path, inherited: int | None = None) -> IO[str]:
    """One daemon per home: a second one names the pid of the first and gives up.

    ``daemon.pid`` is opened without following a symlink: one planted there is refused.
    After a re-exec the lock is the inherited descriptor (the lock never lapses, so no
    other daemon can slip in during the swap), once it is proven to be that very file.
    """
    path = data_dir / "daemon.pid"
    if inherited is not None:
        with contextlib.suppress(OSError):
            held, here = os.fstat(inherited), os.stat(path, follow_symlinks=False)
            if (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino):
                return _locked(os.fdopen(inherited, "r+"))
        os.close(inherited)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OperationFailed(
                f"{path} is a symlink; remove it (rm {path}) and start the daemon again"
            ) from None
        raise OperationFailed(f"cannot open {path}: {exc.strerror}") from None
    return _locked(os.fdopen(fd, "r+"))


def _locked(lock: IO[str]) -> IO[str]:
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


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard one; return the soft limit now.

    Each stream holds a few descriptors (pipes, its log), so the usual soft limit of
    1,024 caps a daemon near 330 streams although the hard limit allows far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


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
    sock = home.bind_private(path)
    os.chmod(path, 0o600)
    return sock


def _setup_logging(settings: Settings) -> None:
    log_dir = settings.log_dir
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = CappedHandler(log_dir / "daemon.log", settings.log_max_bytes, settings.log_backups)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(fmt)
    root = logging.getLogger("streamalchemy")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(console)
    for each in (handler, console):
        each.addFilter(mask_record)  # no log line carries a secret


DRAIN_TIMEOUT = 30.0  # seconds a restart waits for in-flight requests and the launch restore
SETTLE = 0.05  # seconds for connections accepted before the close to reach their handler


class _Listeners:
    """The daemon's listening sockets and the servers that accept on them.

    The servers accept on duplicates, so that ``pause`` stops accepting without
    closing a socket: a client that connects meanwhile waits in the backlog, for
    this daemon's next image, which inherits the sockets across the exec (as many as
    ``httpserver.BACKLOG``).
    """

    def __init__(
        self, control: socket.socket, metrics: list[socket.socket], controller: Controller
    ) -> None:
        self.control = control
        self.metrics = metrics
        self.controller = controller
        self.servers: list[asyncio.Server] = []
        self.in_flight: set[asyncio.Task[Any]] = set()

    def _tracked(self, handler: ConnectionHandler) -> ConnectionHandler:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self.in_flight.add(task)
            try:
                await handler(reader, writer)
            finally:
                if task is not None:
                    self.in_flight.discard(task)

        return run

    async def serve(self) -> None:
        control = self._tracked(connection_handler(routes.dispatcher(self.controller)))
        self.servers = [
            await asyncio.start_unix_server(
                control, sock=self.control.dup(), backlog=CONTROL.accept_batch
            )
        ]
        scrape = self._tracked(connection_handler(self.controller.metrics.handle_tcp, PUBLIC))
        for sock in self.metrics:
            self.servers.append(
                await asyncio.start_server(scrape, sock=sock.dup(), backlog=PUBLIC.accept_batch)
            )
            sock.listen(BACKLOG)  # asyncio set its batch as the kernel's queue: long again

    async def pause(self, timeout: float) -> None:
        """Stop accepting (the sockets stay open) and let in-flight requests finish."""
        for server in self.servers:
            server.close()
        self.servers = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            # A connection accepted just before the close reaches its handler a few
            # loop turns later: let it arrive, then wait for it too.
            await asyncio.sleep(SETTLE)
            left = deadline - asyncio.get_running_loop().time()
            if not self.in_flight or left <= 0:
                break
            await asyncio.wait(set(self.in_flight), timeout=left)
        if self.in_flight:
            log.warning("restarting with %d request(s) still unanswered", len(self.in_flight))

    def handover(self, lock: IO[str], metrics_addr: tuple[str, int] | None) -> Handover:
        return Handover(
            lock=lock.fileno(),
            control=self.control.fileno(),
            metrics=tuple(s.fileno() for s in self.metrics),
            metrics_addr=metrics_addr if self.metrics else None,
            previous_version=__version__,
        )

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for sock in (self.control, *self.metrics):
            sock.close()


async def _open_listeners(
    settings: Settings, controller: Controller, inherited: Handover | None
) -> _Listeners:
    """The inherited sockets after a re-exec, else fresh ones; a metrics address that
    cannot be used stops the launch before anything starts."""
    control = handover.control_socket(inherited, settings.socket) if inherited else None
    metrics = handover.metrics_sockets(inherited, settings.metrics_addr) if inherited else []
    if not metrics and settings.metrics_addr:
        fresh = await listen(controller.metrics, settings.metrics_addr)
        metrics = [socket.socket(fileno=os.dup(s.fileno())) for s in fresh.sockets]
        fresh.close()  # the duplicates stay listening; ``serve`` accepts on them
    return _Listeners(control or _bind(settings.socket), metrics, controller)


class _Restart:
    """``daemon restart`` and SIGHUP: check the installed code, then ask for the swap."""

    def __init__(self) -> None:
        self.wanted = asyncio.Event()
        self._checking = False
        self._hangups: set[asyncio.Task[None]] = set()

    async def request(self) -> dict[str, Any]:
        if self._checking or self.wanted.is_set():
            raise OperationFailed("the daemon is already restarting")
        self._checking = True
        try:
            version = await handover.preflight(__version__)
        finally:
            self._checking = False
        # A moment for the reply to leave before accepting stops.
        asyncio.get_running_loop().call_later(0.05, self.wanted.set)
        log.info("restart: daemon %s gives way to %s (pid %d)", __version__, version, os.getpid())
        return {
            "success": True,
            "message": f"restarting the daemon in place: {__version__} -> {version}",
            "pid": os.getpid(),
            "previous_version": __version__,
            "version": version,
        }

    def hangup(self) -> None:
        """SIGHUP: the same restart; a refusal goes to the log, where the signal's sender looks."""

        async def run() -> None:
            try:
                await self.request()
            except OperationFailed as exc:
                log.error("SIGHUP: not restarting: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._hangups.add(task)
        task.add_done_callback(self._hangups.discard)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for each in pending:
        each.cancel()


# Held back from the moment the old image stops serving until the new one handles them.
_SWAP_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}


class _Daemon:
    """One image of the daemon: what it serves, and how it ends (stop, or give way)."""

    def __init__(self, settings: Settings, lock: IO[str], inherited: Handover | None) -> None:
        self.settings = settings
        self.lock = lock
        self.inherited = inherited
        self.controller = Controller.from_settings(settings)
        self.restart = _Restart()
        self.controller.restart_daemon = self.restart.request
        self.rtsp_server: mediamtx.MediaMTX | None = None
        self.restoring: asyncio.Task[None] | None = None
        self._streams_stopped = False

    async def serve(self, restore: bool, apply: ApplyOption) -> str | None:
        """Serve until asked to stop or to restart; the reason a restart failed, if it did."""
        settings, controller = self.settings, self.controller
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, controller.shutdown.set)
        loop.add_signal_handler(signal.SIGHUP, self.restart.hangup)
        # Blocked by the previous image across its exec: what arrived meanwhile comes now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SWAP_SIGNALS)
        # Live restore: what a previous daemon (or this one before its exec) left running
        # is adopted once the socket is up; otherwise it is ended now, before anything starts.
        survivors = controller.supervisor.survivors()
        if not settings.live_restore:
            killed = controller.supervisor.record.reap_leftovers()
            if killed:
                log.warning("ended %d FFmpeg process(es) left by a previous daemon", len(killed))
        listeners = await _open_listeners(settings, controller, self.inherited)
        # Up before the daemon answers or restores: RTSP streams find their server running.
        self.rtsp_server = await mediamtx.start_if_needed(settings)
        await listeners.serve()
        was = self.inherited and f" (re-executed in place, was {self.inherited.previous_version})"
        log.info(
            "daemon %s listening on %s (pid %d)%s",
            __version__,
            settings.socket,
            os.getpid(),
            was or "",
        )
        systemd.notify("READY=1")
        watch = applying = None
        if apply is not None:
            # The streams this shard lost while it was down must not come back, even briefly.
            apply_file, shard = apply
            ops = controller.apply_ops()
            from streamalchemy.apply import applier  # only with --apply: not on every launch

            watch = applier.file_applier(ops, apply_file, shard, settings.data_dir)
            await watch.prune_first(ops, shard)
        if survivors or (restore and controller.store.enabled):
            self.restoring = asyncio.create_task(
                at_launch(controller, survivors, restore and controller.store.enabled)
            )
        if watch is not None:
            applying = asyncio.create_task(watch.run(after=self.restoring))
        await _first(controller.shutdown, self.restart.wanted)
        if applying is not None:
            applying.cancel()
        failed = None
        if not controller.shutdown.is_set():
            failed = await self._give_way(listeners)
        log.info("shutting down: stopping %d stream(s)", len(controller.supervisor.streams))
        systemd.notify("STOPPING=1")
        listeners.close()
        await self._stop_streams()
        with contextlib.suppress(FileNotFoundError):
            settings.socket.unlink()
        log.info("daemon stopped")
        return failed

    async def _stop_streams(self) -> None:
        if self._streams_stopped:
            return
        self._streams_stopped = True
        if self.restoring is not None and not self.restoring.done():
            self.restoring.cancel()
        await self.controller.close()
        if self.rtsp_server is not None:
            await self.rtsp_server.stop()

    async def _give_way(self, listeners: _Listeners) -> str:
        """Replace this process with the installed code, the listening sockets handed over.

        Returns (the reason) only when the exec itself failed: the daemon then stops.
        """
        systemd.notify("RELOADING=1")
        await listeners.pause(DRAIN_TIMEOUT)
        if self.restoring is not None and not self.restoring.done():
            await asyncio.wait({self.restoring}, timeout=DRAIN_TIMEOUT)
        if self.settings.live_restore:
            # The streams are left as a SIGKILL would leave them: the next image adopts them.
            with contextlib.suppress(StateFileError):
                await self.controller.writer.flush()
        else:
            log.info("live restore is off: stopping the streams; the next daemon restores them")
            await self._stop_streams()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SWAP_SIGNALS)
        for each in logging.getLogger("streamalchemy").handlers:
            each.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        passed = listeners.handover(self.lock, self.settings.metrics_addr)
        try:
            handover.exec_into(passed, handover.argv())
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SWAP_SIGNALS)
            log.error("cannot re-execute the daemon (%s): stopping instead", exc)
            return f"cannot re-execute the daemon: {exc.strerror or exc}"


def run(settings: Settings, restore: bool = True, apply: ApplyOption = None) -> None:
    """Run the daemon in the foreground until SIGTERM, SIGINT or ``POST /shutdown``.

    ``daemon restart`` and SIGHUP replace the process image in place (``_give_way``):
    ``run`` then starts again from the top in the new code, with the same pid.
    """
    if handover.checking(os.environ):
        print(__version__)  # the running daemon asks whether this code gets this far
        return
    inherited = handover.take(os.environ, os.getpid())
    # Logs, the children record (FFmpeg argv with source credentials) and outputs
    # are the user's alone, as the state file is.
    os.umask(0o077)
    home.prepare(settings)  # refuses a home another user could plant in (exit 2)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _hold_instance_lock(settings.data_dir, inherited.lock if inherited else None)
    _setup_logging(settings)
    log.debug("open files limit: %d", raise_fd_limit())
    procs.mark_children()
    try:
        failed = asyncio.run(_main(settings, lock, inherited, restore, apply))
    finally:
        lock.close()
    if failed:
        raise OperationFailed(failed)


async def _main(
    settings: Settings, lock: IO[str], inherited: Handover | None, restore: bool, apply: ApplyOption
) -> str | None:
    if sys.version_info < (3, 12):
        # The default watcher starts a thread per child; pidfds cost one fd each.
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    return await _Daemon(settings, lock, inherited).serve(restore, apply)
