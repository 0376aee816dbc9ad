"""One supervised stream: its FFmpeg runs, live figures, deadline, stalls and restarts.

Nothing here parses requests or touches the state file. The clock, the spawner and
the settings are given, so that the whole restart loop runs in-process in tests
against a stub FFmpeg; the stream reports its end through ``on_end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from streamalchemy.core.saved import deadline
from streamalchemy.core.spec import StreamSpec, mask_credentials
from streamalchemy.supervision import ending, procs
from streamalchemy.supervision.adoption import Survivor
from streamalchemy.supervision.backoff import Backoff
from streamalchemy.supervision.childfiles import (
    ChildFiles,
    ChildIO,
    ChildReader,
    follow,
)
from streamalchemy.supervision.pace import Window
from streamalchemy.supervision.progress import (
    Progress,
    explain_failure,
    name_the_source,
    root_cause,
)
from streamalchemy.supervision.recordings import OutputFiles
from streamalchemy.supervision.rules import (
    CLAMPED,
    CLAMPED_LINES,
    DEADLINE_MARGIN,
    DURATION_REACHED,
    OUTPUT_ADVANCE_US,
    READ_RUNNING,
    READ_STARTING,
    SHED,
    TIMESTAMPS_BACK,
    ArgvFor,
    Clock,
    Spawner,
    StreamSettings,
    SystemClock,
    exit_words,
    rounded,
    should_restart,
)
from streamalchemy.supervision.streamlog import StreamLog

log = logging.getLogger("streamalchemy.supervisor")

ACTIVE = frozenset({"starting", "running", "retrying", "stopping"})
EXITS_KEPT = 10


class Stream:
    """One supervised stream: its FFmpeg process, live figures and restart loop."""

    def __init__(
        self,
        spec: StreamSpec,
        *,
        saved_at: float,
        encoder: str,
        target: str,
        argv_for: ArgvFor,
        log: StreamLog,
        settings: StreamSettings,
        on_end: Callable[[Stream], None],
        files: ChildFiles,
        record: procs.ChildRecord | None = None,
        clock: Clock | None = None,
        spawn: Spawner = procs.spawn,
        rand: random.Random | None = None,
        survivor: Survivor | None = None,
        held: str | None = None,
    ) -> None:
        """``survivor``: the FFmpeg a previous daemon left for this stream, to adopt.
        ``held``: the stream is shed already (why): it runs no FFmpeg until replaced."""
        self.spec = spec
        self.saved_at = saved_at
        self.encoder = encoder
        self.target = target
        self.argv: list[str] = []
        self.log = log
        self.settings = settings
        self.clock = clock or SystemClock()
        self.status = "starting"
        self.restarts = 0
        self.started_at: float | None = None
        self.last_error: str | None = None
        self.progress = Progress()
        self.pace = Window()  # output seconds against the monotonic clock: recent speed
        self.deadline = deadline(saved_at, spec.duration)
        self.exits: deque[dict[str, Any]] = deque(maxlen=EXITS_KEPT)
        self.output = OutputFiles(spec.output, target)
        self._argv_for = argv_for
        self._on_end = on_end
        self._record = record
        self._spawn = spawn
        self._files = files
        self._reader = ChildReader(files, self._ffmpeg_line)
        self._survivor = survivor
        self._proc: procs.Child | None = None
        self._cpu_seen: tuple[int, float, float] | None = None  # pid, when, CPU seconds
        self._progress_at = 0.0
        self._stopping: str | None = None  # why, once a stop is asked for
        self._stalled = False
        self._ending = ending.Ending()  # the deadline's SIGTERM, then SIGKILL after the grace
        self._stall_reason = ""  # what _judge reports for a stall, if not "no progress"
        self._output_mark = 0  # the output time when progress was last seen
        self._clamped = 0  # "Non-monotonous DTS" lines since the last progress block
        self._returncode = 0  # of the last FFmpeg, negative for a signal
        self._wake = asyncio.Event()
        self._confirmed: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._backoff = Backoff(
            base=settings.backoff_base, cap=settings.backoff_cap, rand=rand or random.Random()
        )
        if held is not None:
            self.status, self.last_error, self._stopping = SHED, held, held
        self.task = asyncio.create_task(self._run(), name=f"stream-{spec.name}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def current_output(self) -> str:
        """The file FFmpeg writes now (rec.2.mp4 after two restarts); else the output."""
        return self.output.current

    def remaining(self, now: float) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - now)

    async def confirmed(self, window: float) -> str | None:
        """Wait until FFmpeg reports progress (None) or fails (its reason).

        A process still alive after ``window`` seconds counts as started: a network
        source may take a while to send its first frame.
        """
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._confirmed), window)
        return None

    def _confirm(self, failure: str | None) -> None:
        if not self._confirmed.done():
            self._confirmed.set_result(failure)

    def _past_deadline(self, margin: float = 0.0) -> bool:
        return self.deadline is not None and self.clock.time() >= self.deadline - margin

    # -- the restart loop ----------------------------------------------------------

    async def _run(self) -> None:
        """Run FFmpeg until a stop, the deadline or the restart policy ends the stream.

        Nothing escapes: an unexpected error is one more failure under the policy.
        """
        try:
            while self._stopping is None:
                if self._past_deadline() and self._survivor is None:
                    self._end("finished", DURATION_REACHED)
                    return
                try:
                    ran_for, code = await self._run_once()
                    if self._stopping is not None:
                        return
                    if self._past_deadline(margin=DEADLINE_MARGIN):
                        self._note_exit(code, DURATION_REACHED)
                        self._end("finished", DURATION_REACHED)
                        return
                    reason, restart = self._judge(code)
                    self._note_exit(code, reason or self._clean_end)
                except Exception as exc:  # a bug or an OS error must not end supervision
                    log.exception("%s: supervising FFmpeg failed", self.spec.name)
                    await self._kill_quietly()
                    if self._stopping is not None:
                        return
                    ran_for, reason = 0.0, f"internal error: {exc}"
                    self._note_exit(None, reason)
                    restart = self.spec.restart != "never"
                if reason is not None:
                    self.last_error = reason
                    self._confirm(reason)
                if not restart:
                    self._end("failed" if reason else "finished", reason or self._clean_end)
                    return
                delay = self._backoff.next_delay(ran_for)
                if self._stalled and self._stall_reason == TIMESTAMPS_BACK and ran_for >= 5:
                    delay = 0.0  # a source that looped is no failure: back at once
                self.status = "retrying"
                self.log.event(f"restarting in {delay:.1f}s: {reason or self._clean_end}")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                if self._stopping is None:
                    self.restarts += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # in _end or the backoff: still never a silent ghost
            log.exception("%s: supervisor loop failed", self.spec.name)
            self.status, self.last_error = "failed", f"internal error: {exc}"
        finally:
            self._confirm(self.last_error or "stream ended")

    @property
    def _clean_end(self) -> str:
        return "the source ended" if self.spec.source_type == "rtsp" else "FFmpeg exited"

    def _judge(self, code: int | None) -> tuple[str | None, bool]:
        """Why FFmpeg ended (None: a clean end) and whether it runs again."""
        if self._stalled:
            reason = f"stalled: {self._stall_reason}"
        elif code == 0 and self.spec.source_type == "rtsp":
            # A network source that ends before the deadline is an interruption: a
            # relay that stops relaying is the one thing this tool must not do.
            # Only --restart never takes the source's end for the stream's.
            if self.spec.restart == "never":
                return None, False
            return "the source ended before the stream's end", True
        elif code == 0:
            reason = None
        else:
            cause = root_cause(list(self.log.tail))
            masked = mask_credentials(self.spec.source)
            reason = (
                explain_failure(name_the_source(cause, self.argv, masked), self.target)
                if cause
                else f"FFmpeg {exit_words(self._returncode)}"
            )
        return reason, should_restart(self.spec.restart, code, self._stalled)

    async def _run_once(self) -> tuple[float, int | None]:
        """Run FFmpeg once; return how long it ran and its exit code (None: a signal)."""
        self.status = "starting"
        self._stalled = False
        self._output_mark = self._clamped = 0
        self._progress_at = self.clock.monotonic()
        self.log.tail.clear()
        survivor, self._survivor = self._survivor, None
        proc = self._adopt(survivor) if survivor is not None else await self._spawn_ffmpeg()
        if proc is None:
            return 0.0, None
        started = self.clock.monotonic()
        returncode = self._returncode = await self._follow(proc)
        self._forget_child()
        code = None if returncode < 0 else returncode
        if self._stopping is not None:
            # Our own SIGTERM: FFmpeg's 255 (or the signal) is the stop, not an error;
            # ``stop`` logs the reason once.
            self._note_exit(code, self._stopping)
        elif not self._past_deadline(margin=DEADLINE_MARGIN):
            self.log.event(f"FFmpeg (pid {proc.pid}) {exit_words(returncode)}")
        return self.clock.monotonic() - started, code

    async def _spawn_ffmpeg(self) -> procs.Child | None:
        target = self.output.next_spawn()
        # Its remaining time goes on the command line: the deadline holds with no daemon.
        self.argv = self._argv_for(target, self.remaining(self.clock.time()))
        try:  # fails when the name's lock is held: an FFmpeg of it still runs
            io = self._files.for_child(outlive=self.settings.live_restore)
        except Exception as exc:
            io, why = None, f"cannot open the files of FFmpeg: {getattr(exc, 'strerror', exc)}"
        if io is not None:
            try:
                proc = await self._spawn(self.argv, io)
            except OSError as exc:
                why = f"cannot run {self.argv[0]}: {exc.strerror or exc}"
            else:
                self._proc, self.started_at = proc, self.clock.time()
                if self._stopping is not None:  # stop() came while the fork was under way
                    await procs.stop(proc, self.settings.grace)
                self._record_child(proc.pid, io, target)
                where = f", writing {mask_credentials(target)}" if target != self.target else ""
                self.log.event(f"started FFmpeg (pid {proc.pid}){where}")
                return proc
            finally:
                io.close()
        self.log.event(why)
        self.log.tail.append(why)
        return None

    def _adopt(self, survivor: Survivor) -> procs.Child:
        """Take over the FFmpeg a previous daemon left: same pid, same file, same deadline."""
        proc, entry = survivor.process, survivor.record
        self._proc = proc
        self.argv = [str(a) for a in entry.get("argv", [])]
        if isinstance(entry.get("target"), str):
            self.output.current = entry["target"]  # a recording goes on in the same file
        started = entry.get("started_at")
        self.started_at = float(started) if isinstance(started, int | float) else self.clock.time()
        if survivor.alive:
            if self._record is not None:
                self._record.put(self.spec.name, entry)
            why = f"adopted FFmpeg (pid {proc.pid}) left running by a previous daemon"
            self.exits.append(
                {"at": self.clock.time(), "code": None, "reason": why, "event": "adopted"}
            )
            self.log.event(why)
            self.status = "running"
            self._confirm(None)
        else:
            self.log.event(f"FFmpeg (pid {proc.pid}) ended while no daemon was running")
        return proc

    async def _follow(self, proc: procs.Child) -> int:
        """Read FFmpeg's files until it exits; return its exit status."""
        code = await follow(
            proc.wait(),
            lambda: self._take_progress(self._reader.read()),
            lambda: READ_STARTING if self.status == "starting" else READ_RUNNING,
        )
        self._take_progress(self._reader.end())
        return code

    def _note_exit(self, code: int | None, reason: str) -> None:
        self.exits.append({"at": self.clock.time(), "code": code, "reason": reason})

    def _record_child(self, pid: int, io: ChildIO, target: str) -> None:
        if self._record is not None:
            extra = {"target": target, "encoder": self.encoder, "started_at": self.started_at}
            self._record.spawned(self.spec.name, pid, self.argv, extra, io.keep[:1])

    def _forget_child(self) -> None:
        if self._record is not None:
            self._record.ended(self.spec.name, self._files)

    async def _kill_quietly(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                procs.signal_group(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), self.settings.grace)
        self._forget_child()

    def _take_progress(self, block: Progress | None) -> None:
        if block is None:
            return
        previous, self.progress = self.progress, block
        self.pace.add(self.clock.monotonic(), block.out_time_us / 1e6)
        self._clamped = 0
        if block.out_time_us > 0:
            advanced = block.out_time_us - self._output_mark >= OUTPUT_ADVANCE_US
        else:  # no output time (yet): frames are all there is to go by
            advanced = block.frames != previous.frames
        if advanced:
            self._progress_at = self.clock.monotonic()
            self._output_mark = block.out_time_us
        # Running means frames flow: a source that sends none keeps it starting.
        if self.status == "starting" and block.frames > 0 and self._stopping is None:
            self.status = "running"
            self.last_error = None
            self._confirm(None)

    def _ffmpeg_line(self, line: str) -> None:
        self.log.ffmpeg(line)
        if any(words in line for words in CLAMPED):
            self._clamped += 1
            if self._clamped == CLAMPED_LINES:
                # SIGTERM: FFmpeg closes the segment or file it writes, as on a stop.
                self._kill_stalled(TIMESTAMPS_BACK, signal.SIGTERM)

    def _kill_stalled(self, why: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """End an FFmpeg that runs without making output; ``_judge`` restarts it."""
        pid = self.pid
        if pid is None or self._stopping is not None:
            return
        if self._stalled:  # ended once already: a SIGTERM it did not obey
            procs.signal_group(pid, signal.SIGKILL)
            return
        self._stalled, self._stall_reason = True, why
        self.log.event(f"{why}: killing FFmpeg (pid {pid})")
        procs.signal_group(pid, sig)

    def _end(self, status: str, why: str) -> None:
        self.status = status
        if why == DURATION_REACHED:
            self.log.event(f"finished: {why}")
        else:
            self.log.event(f"{status}: {why}; not restarting (--restart {self.spec.restart})")
        self.output.end()
        self._files.close()
        try:
            self._on_end(self)
        except Exception:
            log.exception("%s: handling the end of the stream failed", self.spec.name)

    # -- called by the supervisor ----------------------------------------------------

    def check(self, now: float, mono: float) -> None:
        """Called every tick (once a second): enforce the deadline, catch a stalled FFmpeg."""
        pid = self.pid
        if self.status == SHED:
            if self.deadline is not None and now >= self.deadline:
                self._end("finished", DURATION_REACHED)  # shed or not, it ends on time
            return
        if pid is not None:
            self._take_progress(self._reader.read())  # what FFmpeg wrote up to now counts
        if self.deadline is not None and now >= self.deadline and self.active:
            if pid is not None and self._ending.push(pid, mono, self.settings.grace):
                self.log.event(f"duration reached; FFmpeg (pid {pid}) ignored SIGTERM: killed")
            self._wake.set()
        elif pid is not None and (full := self.output.disk_full()):  # FFmpeg would not say
            self._kill_stalled(full)
        elif mono - self._progress_at > self.settings.stall_timeout:
            self._kill_stalled(f"no progress for {self.settings.stall_timeout:g}s")

    def forgive_pause(self, mono: float) -> None:
        """The daemon was not running until ``mono``: restart the stall clock from now."""
        self._progress_at = max(self._progress_at, mono)

    async def stop(self, reason: str) -> None:
        self._stopping = reason
        if self.active:
            self.status = "stopping"
        self._wake.set()
        if self._proc is not None:
            await procs.stop(self._proc, self.settings.grace)
        if not self.task.done():  # waits without its outcome: the caller's cancel is the caller's
            await asyncio.wait([self.task])
        self.log.event(reason)
        self.output.end()
        self._files.close()

    async def shed(self, reason: str) -> None:
        """Stop FFmpeg for lack of CPU: the stream stays, ``shed``, until replaced or stopped."""
        await self.stop(reason)
        self.status, self.last_error = SHED, reason

    def usage(self) -> tuple[float | None, float | None]:
        """CPU percent since the last call, and resident memory in MiB."""
        pid = self.pid
        if pid is None:
            return None, None
        # One read of /proc/PID/stat: ``list`` polls this for every stream, and two
        # psutil calls per stream cost a loaded daemon (a restore) three times as much.
        figures = procs.process_usage(pid)
        if figures is None:
            return None, None
        cpu_s, rss = figures
        now, last = time.monotonic(), self._cpu_seen
        self._cpu_seen = (pid, now, cpu_s)
        if last is None or last[0] != pid or now <= last[1]:
            return 0.0, rss / 2**20  # as psutil's first cpu_percent(None)
        return round(100 * (cpu_s - last[2]) / (now - last[1]), 1), rss / 2**20

    def history(self) -> list[dict[str, Any]]:
        """The last exits of FFmpeg, oldest first: when, exit code (None: a signal), why."""
        return [dict(e, reason=mask_credentials(e["reason"])) for e in self.exits]

    def snapshot(self) -> dict[str, Any]:
        now = self.clock.time()
        cpu, mem = self.usage()
        running = self.pid is not None and self.started_at is not None
        return {
            "name": self.spec.name,
            "status": self.status,
            "pid": self.pid,
            "source": mask_credentials(self.spec.source) if self.spec.source else "testsrc",
            "source_type": self.spec.source_type,
            "output": mask_credentials(self.target),
            "current_output": mask_credentials(self.current_output),
            "codec": self.spec.codec,
            "encoder": self.encoder,
            "restart": self.spec.restart,
            "priority": self.spec.priority,
            "saved_at": self.saved_at,
            "started_at": self.started_at,
            "uptime_seconds": now - self.started_at if running and self.started_at else None,
            "duration_seconds": self.spec.duration or None,
            "remaining_seconds": self.remaining(now),
            "restarts": self.restarts,
            "frames": self.progress.frames,
            "fps": self.progress.fps,
            "bitrate_kbps": self.progress.bitrate_kbps
            if self.progress.bitrate_kbps is not None or self.status != "running"
            else self.output.bitrate_kbps(),
            "speed": self.progress.speed,
            # Over the last seconds, as shedding judges it (``speed`` is since FFmpeg began).
            "recent_speed": rounded(self.pace.rate()) if running else None,
            "cpu_percent": cpu,
            "memory_mb": None if mem is None else round(mem, 1),
            "last_error": self.last_error,
            "log_file": str(self.log.path),
            "exits": self.history(),
        }
