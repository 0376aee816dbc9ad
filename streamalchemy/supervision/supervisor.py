"""Own the FFmpeg children of the daemon: all its streams and the tick that watches them.

Nothing here parses requests or touches the state file; the controller decides,
this module carries it out (each stream in ``stream.Stream``) and reports through
``on_end`` when a stream ends by itself. The clock and the spawner are injected.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable
from pathlib import Path

from streamalchemy.core.spec import StreamSpec
from streamalchemy.errors import OperationFailed, StreamExists
from streamalchemy.supervision import procs
from streamalchemy.supervision.adoption import Survivor
from streamalchemy.supervision.childfiles import ChildFiles
from streamalchemy.supervision.rules import (
    DURATION_REACHED,
    REPLACED,
    SHED,
    SHUTDOWN,
    USER_RESTART,
    USER_STOP,
    ArgvFor,
    Clock,
    Spawner,
    StreamSettings,
    SystemClock,
    should_restart,
)
from streamalchemy.supervision.stream import ACTIVE, Stream
from streamalchemy.supervision.streamlog import LOG_BACKUPS, LOG_MAX_BYTES, StreamLog

__all__ = [
    "ACTIVE",
    "DURATION_REACHED",
    "REPLACED",
    "SHED",
    "SHUTDOWN",
    "USER_RESTART",
    "USER_STOP",
    "ArgvFor",
    "Clock",
    "Spawner",
    "Stream",
    "StreamSettings",
    "Supervisor",
    "SystemClock",
    "should_restart",
]

log = logging.getLogger("streamalchemy.supervisor")
TICK = 1.0  # seconds between deadline and stall checks
# A tick this late means the daemon itself was not running (SIGSTOP, a suspended VM):
# the streams' silence meanwhile is not theirs.
PAUSE_GAP = 3.0
FINISHED_KEEP = 300.0  # seconds a finished stream stays listed before only `show` has it
ENDED_KEPT = 100  # streams that ended by themselves, kept for `show` once unlisted


class Supervisor:
    """All streams of the daemon, and the one-second tick that watches them."""

    def __init__(
        self,
        *,
        record: procs.ChildRecord,
        log_dir: Path,
        stall_timeout: float,
        on_end: Callable[[Stream], None],
        grace: float = 5.0,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        live_restore: bool = True,
        clock: Clock | None = None,
        spawn: Spawner = procs.spawn,
        rand: random.Random | None = None,
        tick_every: float | None = TICK,
    ) -> None:
        """``tick_every`` None: no ticker runs; the caller (a test) calls ``tick``."""
        self.record = record
        self.log_dir = log_dir
        self.settings = StreamSettings(
            stall_timeout=stall_timeout,
            grace=grace,
            log_max_bytes=log_max_bytes,
            log_backups=log_backups,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            live_restore=live_restore,
        )
        self.clock = clock or SystemClock()
        self.rand = rand or random.Random()
        self.streams: dict[str, Stream] = {}
        self.ended: collections.OrderedDict[str, Stream] = collections.OrderedDict()
        # Live restore: the FFmpeg a previous daemon left, by name, for its next launch.
        self.adopting: dict[str, Survivor] = {}
        self._spawn = spawn
        self._on_end = on_end
        self._ticker: asyncio.Task[None] | None = None
        self._tick_every = tick_every
        self._last_tick: float | None = None
        self.closed = False  # stop_all has begun: nothing launches any more
        self.finished_keep = FINISHED_KEEP

    @property
    def stall_timeout(self) -> float:
        return self.settings.stall_timeout

    @property
    def grace(self) -> float:
        return self.settings.grace

    def log_path(self, name: str) -> Path:
        return self.log_dir / "streams" / f"{name}.log"

    def stream_log(self, name: str) -> StreamLog:
        return StreamLog(
            self.log_path(name), self.settings.log_max_bytes, self.settings.log_backups
        )

    def note(self, name: str, text: str) -> None:
        """Append a lifecycle line to a stream's log, running or not (a restore skip)."""
        self.stream_log(name).event(text)

    def launch(
        self,
        spec: StreamSpec,
        *,
        saved_at: float,
        encoder: str,
        target: str,
        argv_for: ArgvFor,
        held: str | None = None,
    ) -> Stream:
        """Begin supervising a new start of a stream; the caller awaits ``Stream.confirmed``.

        ``argv_for`` builds FFmpeg's command line for the file it is to write, once per
        spawn: a restarted recording goes to the next numbered file. The FFmpeg a
        previous daemon left for the name, if ``adopting`` holds one, is adopted instead
        of a first spawn. Refuses a name that is still active: stop it first. ``held``:
        the stream is shed, for that reason, and runs nothing (its deadline is still
        watched).
        """
        if self.closed:  # a request still in flight at shutdown: no FFmpeg after stop_all
            raise OperationFailed(f"{spec.name}: not started: the daemon is shutting down")
        survivor = self.adopting.pop(spec.name, None) if held is None else None
        current = self.streams.get(spec.name)
        if current is not None and current.active:
            raise StreamExists(f"stream {spec.name!r} is already running (pid {current.pid})")
        if self._tick_every is not None and (self._ticker is None or self._ticker.done()):
            self._last_tick = self.clock.monotonic()
            self._ticker = asyncio.create_task(self._tick(self._tick_every), name="tick")
        stream = Stream(
            spec,
            saved_at=saved_at,
            encoder=encoder,
            target=target,
            argv_for=argv_for,
            log=self.stream_log(spec.name),
            settings=self.settings,
            on_end=self._on_end,
            files=ChildFiles(self.record.run_dir, spec.name),
            record=self.record,
            clock=self.clock,
            spawn=self._spawn,
            rand=self.rand,
            survivor=survivor,
            held=held,
        )
        if held is not None:
            stream.log.event(held)
        elif survivor is None:  # an adopted FFmpeg goes on writing what it wrote
            stream.output.begin()
        self.streams[spec.name] = stream
        return stream

    def survivors(self) -> dict[str, Survivor]:
        """The FFmpeg children a previous daemon left (live restore), by stream name."""
        return self.record.survivors() if self.settings.live_restore else {}

    async def stop(self, name: str, reason: str = USER_STOP) -> None:
        stream = self.streams.pop(name)
        await stream.stop(reason)

    def forget_later(self, stream: Stream) -> None:
        """A stream that finished stays listed ``finished_keep`` seconds (a script polling
        for its end sees it), then leaves the list and /metrics for ``ended``."""
        asyncio.get_running_loop().call_later(self.finished_keep, self.forget, stream)

    def forget(self, stream: Stream) -> None:
        """A stream that ended for good leaves ``streams`` (the list, the metrics) for
        ``ended``, the last ``ENDED_KEPT`` of them, which ``show`` still finds."""
        name = stream.spec.name
        if self.streams.get(name) is not stream or stream.active:
            return  # started again meanwhile
        del self.streams[name]
        self.ended[name] = stream
        self.ended.move_to_end(name)
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)

    async def stop_all(self, reason: str = SHUTDOWN) -> None:
        self.closed = True
        await asyncio.gather(*(self.stop(name, reason) for name in list(self.streams)))
        self.record.flush()  # the children's record written before the loop ends
        if self._ticker is not None:
            self._ticker.cancel()

    def tick(self) -> None:
        """One round of deadline and stall checks (the ticker calls it every second)."""
        now, mono = self.clock.time(), self.clock.monotonic()
        paused = self._last_tick is not None and mono - self._last_tick > PAUSE_GAP
        self._last_tick = mono
        for stream in list(self.streams.values()):
            if paused:
                stream.forgive_pause(mono)
            try:
                stream.check(now, mono)
            except Exception:  # one stream's trouble must not stop the others' checks
                log.exception("%s: check failed", stream.spec.name)
        if paused:
            log.warning("the daemon was paused; stall clocks restarted")

    async def _tick(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.tick()
