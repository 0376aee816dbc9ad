"""The daemon process: one per home; binds its socket, logs, serves, handles signals.

What each request does is decided by ``controller.Controller``; this module only
runs it: the instance lock, the control socket, logging, the serve loop and the
graceful shutdown on SIGTERM, SIGINT or ``POST /shutdown``.
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
from pathlib import Path
from typing import IO

from streamalchemy import __version__, home
from streamalchemy.core.masking import mask_record
from streamalchemy.deploy import systemd
from streamalchemy.errors import OperationFailed
from streamalchemy.server import routes
from streamalchemy.server.controller import Controller
from streamalchemy.server.httpserver import connection_handler
from streamalchemy.server.metrics import listen
from streamalchemy.server.restoring import at_launch
from streamalchemy.settings import Settings
from streamalchemy.supervision import mediamtx, procs
from streamalchemy.supervision.streamlog import CappedHandler

log = logging.getLogger("streamalchemy.daemon")

# ``daemon run --apply FILE [--shard I/N]``: the file, and the shard (None: every stream).
ApplyOption = tuple[Path, tuple[int, int] | None] | None


# -- process lifecycle -------------------------------------------------------------


def _hold_instance_lock(data_dir: Path) -> IO[str]:
    """One daemon per home: a second one names the pid of the first and gives up.

    ``daemon.pid`` is opened without following a symlink: one planted there is refused.
    """
    path = data_dir / "daemon.pid"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OperationFailed(
                f"{path} is a symlink; remove it (rm {path}) and start the daemon again"
            ) from None
        raise OperationFailed(f"cannot open {path}: {exc.strerror}") from None
    lock = os.fdopen(fd, "r+")
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


async def _serve(settings: Settings, restore: bool, apply: ApplyOption) -> None:
    if sys.version_info < (3, 12):
        # The default watcher starts a thread per child; pidfds cost one fd each.
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    controller = Controller.from_settings(settings)
    # Live restore: what a previous daemon left running is adopted after the socket is
    # up; otherwise it is ended now, before anything starts.
    survivors = controller.supervisor.survivors()
    if not settings.live_restore:
        killed = controller.supervisor.record.reap_leftovers()
        if killed:
            log.warning("ended %d FFmpeg process(es) left by a previous daemon", len(killed))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.shutdown.set)
    # A metrics address that cannot be used stops the launch before anything starts.
    metrics_server = (
        await listen(controller.metrics, settings.metrics_addr) if settings.metrics_addr else None
    )
    # Up before the daemon answers or restores: RTSP streams find their server running.
    rtsp_server = await mediamtx.start_if_needed(settings)
    server = await asyncio.start_unix_server(
        connection_handler(routes.dispatcher(controller)), sock=_bind(settings.socket)
    )
    log.info("daemon %s listening on %s (pid %d)", __version__, settings.socket, os.getpid())
    systemd.notify("READY=1")
    restoring = watch = applying = None
    if apply is not None:
        # The streams this shard lost while it was down must not come back, even briefly.
        apply_file, shard = apply
        ops = controller.apply_ops()
        from streamalchemy.apply import applier  # only with --apply: not on every launch's path

        watch = applier.file_applier(ops, apply_file, shard, settings.data_dir)
        await watch.prune_first(ops, shard)
    if survivors or (restore and controller.store.enabled):
        restoring = asyncio.create_task(
            at_launch(controller, survivors, restore and controller.store.enabled)
        )
    if watch is not None:
        applying = asyncio.create_task(watch.run(after=restoring))
    await controller.shutdown.wait()
    if applying is not None:
        applying.cancel()
    log.info("shutting down: stopping %d stream(s)", len(controller.supervisor.streams))
    systemd.notify("STOPPING=1")
    server.close()
    if metrics_server is not None:
        metrics_server.close()
    if restoring is not None and not restoring.done():
        restoring.cancel()
    await controller.close()
    if rtsp_server is not None:
        await rtsp_server.stop()
    with contextlib.suppress(FileNotFoundError):
        settings.socket.unlink()
    log.info("daemon stopped")


def run(settings: Settings, restore: bool = True, apply: ApplyOption = None) -> None:
    """Run the daemon in the foreground until SIGTERM, SIGINT or ``POST /shutdown``."""
    # Logs, the children record (FFmpeg argv with source credentials) and outputs
    # are the user's alone, as the state file is.
    os.umask(0o077)
    home.prepare(settings)  # refuses a home another user could plant in (exit 2)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _hold_instance_lock(settings.data_dir)
    _setup_logging(settings)
    log.debug("open files limit: %d", raise_fd_limit())
    procs.mark_children()
    try:
        asyncio.run(_serve(settings, restore, apply))
    finally:
        lock.close()
