"""Run MediaMTX, the RTSP server default outputs push to, when it is installed but not running.

Optional: nothing is started without a ``mediamtx`` binary (``STREAMALCHEMY_MEDIAMTX``,
config.toml's ``mediamtx`` or PATH), with it set to ``off``, with an RTSP URL on another
host, or with something already listening on its port. Otherwise the daemon owns it like
a stream: its own session, restarted with backoff, its output in a file the daemon
follows into ``<log dir>/mediamtx.log``. With live restore it outlives a daemon that
dies, and the next daemon adopts it as it adopts FFmpeg (``adoption``); without, it is
killed with the daemon. Nothing here touches streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from streamalchemy.settings import Settings
from streamalchemy.supervision import adoption, procs
from streamalchemy.supervision.backoff import Backoff
from streamalchemy.supervision.childfiles import ChildFiles, ChildReader, follow, write_identity
from streamalchemy.supervision.streamlog import LOG_BACKUPS, LOG_MAX_BYTES, StreamLog

log = logging.getLogger("streamalchemy.mediamtx")

READY_WAIT = 5.0  # seconds the daemon waits for MediaMTX's port before restoring streams
STOP_GRACE = 5.0
READ_EVERY = 1.0  # seconds between reads of MediaMTX's output file
NAME = "mediamtx"


def local_address(rtsp_url: str) -> tuple[str, int] | None:
    """The host and port of a plain ``rtsp://`` URL on this machine, else None.

    An ``rtsps://`` server needs MediaMTX's TLS settings: that one the user runs.
    """
    try:
        parts = urlsplit(rtsp_url)
        port = parts.port or 554
    except ValueError:  # the settings refuse such a URL; never fail the launch here
        return None
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if parts.scheme != "rtsp" or not local:
        return None
    return host, port


def listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a server accepts TCP connections there (a plain connect: fine for an RTSP server)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


class MediaMTX:
    """One supervised MediaMTX process, restarted with backoff until ``stop``."""

    def __init__(
        self,
        binary: str,
        host: str,
        port: int,
        log_dir: Path,
        log_caps: tuple[int, int] = (LOG_MAX_BYTES, LOG_BACKUPS),
        *,
        run_dir: Path,
        live_restore: bool = True,
        adopt: adoption.Survivor | None = None,
    ) -> None:
        """``adopt``: the MediaMTX a previous daemon left running, taken over."""
        self.argv = [binary]
        self.host, self.port = host, port
        self.log = StreamLog(log_dir / "mediamtx.log", *log_caps)
        self.backoff = Backoff()
        self.live_restore = live_restore
        self.files = ChildFiles(run_dir, NAME, merged=True)
        self._adopt = adopt
        self._proc: procs.Child | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin supervising and wait, bounded, until the RTSP port answers."""
        self._task = asyncio.create_task(self._supervise(), name="mediamtx")
        deadline = time.monotonic() + READY_WAIT
        while not await asyncio.to_thread(listening, self.host, self.port, 0.2):
            if time.monotonic() >= deadline:
                log.warning(
                    "MediaMTX is not listening on port %d after %gs; streams will retry; see %s",
                    self.port,
                    READY_WAIT,
                    self.log.path,
                )
                return
            await asyncio.sleep(0.05)
        log.info("MediaMTX listening on %s:%d", self.host, self.port)

    async def _spawn(self) -> procs.Child:
        if self._adopt is not None:
            survivor, self._adopt = self._adopt, None
            self.log.event(f"adopted MediaMTX pid {survivor.process.pid} left by a previous daemon")
            return survivor.process
        io = self.files.for_child(outlive=self.live_restore)
        try:
            proc = await procs.spawn(
                self.argv,
                io,
                # Where the release's mediamtx.yml sits, next to the binary, is where it looks.
                cwd=Path(self.argv[0]).parent,
                # Listen where our streams push to, whatever the port.
                env={**os.environ, "MTX_RTSPADDRESS": f":{self.port}"},
            )
            found = adoption.identity(proc.pid, self.argv)
            if found is not None:
                write_identity(io.keep[0], found)  # for the next daemon to adopt it
        finally:
            io.close()
        self.log.event(f"started MediaMTX pid {proc.pid}")
        return proc

    async def _supervise(self) -> None:
        reader = ChildReader(self.files, self.log.ffmpeg)  # any child's lines
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._proc = await self._spawn()
            except OSError as exc:
                self.log.event(f"cannot run {self.argv[0]}: {exc.strerror}")
                code = 127
            else:
                if self._stopping.is_set():  # stop() came while the fork was under way
                    await procs.stop(self._proc, STOP_GRACE)
                code = await follow(self._proc.wait(), reader.read, lambda: READ_EVERY)
                reader.end()
                self.files.forget()
                self.log.event(f"MediaMTX pid {self._proc.pid} exited with code {code}")
            if self._stopping.is_set():
                return
            delay = self.backoff.next_delay(time.monotonic() - started)
            self.log.event(f"restarting in {delay:.1f}s")
            log.warning("MediaMTX exited with code %d; restarting in %.1fs", code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def stop(self) -> None:
        """Stop supervising, then stop MediaMTX's process group (SIGTERM, SIGKILL after grace)."""
        self._stopping.set()
        if self._proc is not None:
            await procs.stop(self._proc, STOP_GRACE)
        if self._task is not None:
            await self._task
        self.files.close()
        self.log.event("stopped")
        self.log.close()


async def start_if_needed(settings: Settings) -> MediaMTX | None:
    """Start MediaMTX for the daemon when it is installed and no RTSP server is up already."""
    if settings.mediamtx is None:  # none installed, or STREAMALCHEMY_MEDIAMTX=off
        return None
    address = local_address(settings.rtsp_url)
    if address is None:
        log.info(
            "MediaMTX not started: %s is not an rtsp:// URL on this machine", settings.rtsp_url
        )
        return None
    run_dir = settings.data_dir / "run"
    left = adoption.find({}, run_dir).get(NAME) if settings.live_restore else None
    caps = (settings.log_max_bytes, settings.log_backups)
    if left is not None and left.alive:  # ours, left running by a previous daemon
        server = MediaMTX(
            settings.mediamtx, *address, settings.log_dir, caps, run_dir=run_dir, adopt=left
        )
        await server.start()
        return server
    if await asyncio.to_thread(listening, *address):
        log.info("MediaMTX not started: something already listens on port %d", address[1])
        return None
    server = MediaMTX(
        settings.mediamtx,
        *address,
        settings.log_dir,
        caps,
        run_dir=run_dir,
        live_restore=settings.live_restore,
    )
    await server.start()
    return server
