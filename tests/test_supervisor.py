"""The supervisor in-process: a stub FFmpeg script, a fake clock, no daemon. Seconds in all."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from streamalchemy.core.spec import StreamSpec
from streamalchemy.errors import OperationFailed, StreamExists
from streamalchemy.supervision import procs
from streamalchemy.supervision.adoption import EXIT_UNKNOWN, Adopted, Survivor, is_ours
from streamalchemy.supervision.backoff import Backoff
from streamalchemy.supervision.childfiles import ChildFiles, ChildIO, write_identity
from streamalchemy.supervision.rules import exit_words
from streamalchemy.supervision.supervisor import (
    DURATION_REACHED,
    SHUTDOWN,
    USER_STOP,
    ArgvFor,
    Spawner,
    Stream,
    Supervisor,
    should_restart,
)

STUB = Path(__file__).with_name("stub_ffmpeg.py")
STALL = 5.0


class FakeClock:
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def stub(*args: str) -> ArgvFor:
    return lambda target, remaining=None: [sys.executable, str(STUB), *args]


def spec(
    name: str = "s", source_type: str = "testsrc", output: str = "null", **kw: Any
) -> StreamSpec:
    source = {"testsrc": "", "rtsp": "http://127.0.0.1:9/clip.mp4", "file": "/v.mp4"}
    return StreamSpec(
        name=name, source_type=source_type, source=source[source_type], output=output, **kw
    )


class Harness:
    def __init__(self, tmp: Path, spawn: Spawner = procs.spawn, **settings: Any) -> None:
        self.clock = FakeClock()
        self.ended: list[Stream] = []
        self.sup = Supervisor(
            record=procs.ChildRecord(tmp / "children.json"),
            log_dir=tmp,
            stall_timeout=STALL,
            on_end=self.ended.append,
            grace=2.0,
            backoff_base=0.01,
            backoff_cap=0.05,
            clock=self.clock,
            spawn=spawn,
            rand=random.Random(1),
            tick_every=None,
            **settings,
        )

    def launch(self, s: StreamSpec, argv_for: ArgvFor, target: str = "null") -> Stream:
        return self.sup.launch(
            s, saved_at=self.clock.time(), encoder="libx264", target=target, argv_for=argv_for
        )

    async def ticks(self, seconds: int) -> None:
        """Advance the clock second by second, letting the streams read FFmpeg in between."""
        for _ in range(seconds):
            self.clock.advance(1)
            self.sup.tick()
            await asyncio.sleep(0.08)


async def until(predicate: Callable[[], object], what: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def run(tmp: Path, test: Callable[[Harness], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        h = Harness(tmp, **kw)
        try:
            await asyncio.wait_for(test(h), 20)
        finally:
            await h.sup.stop_all()

    asyncio.run(main())


def log_text(stream: Stream) -> str:
    return stream.log.path.read_text()


# -- pure rules -----------------------------------------------------------------------


def test_backoff_doubles_to_a_cap_with_jitter_and_resets_when_healthy() -> None:
    backoff = Backoff(rand=random.Random(7))
    delays = [backoff.next_delay(ran_for=0.5) for _ in range(10)]
    caps = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    for delay, cap in zip(delays, caps, strict=True):
        assert cap / 2 <= delay <= cap
    assert backoff.next_delay(ran_for=120) <= 1.0  # a healthy minute starts over


def test_restart_policies() -> None:
    assert should_restart("on-failure", 1, stalled=False)
    assert should_restart("on-failure", None, stalled=False)
    assert should_restart("on-failure", 0, stalled=True)
    assert not should_restart("on-failure", 0, stalled=False)
    assert should_restart("always", 0, stalled=False)
    assert not should_restart("never", 1, stalled=True)


# -- the restart loop ---------------------------------------------------------------------


def test_failing_ffmpeg_restarts_with_backoff_and_keeps_its_last_ten_exits(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub("--blocks", "1", "--exit", "1", "--say", "Connection refused"))
        await until(lambda: s.restarts >= 12, "a dozen restarts")
        exits = s.history()
        assert len(exits) == 10
        assert all(e["code"] == 1 and e["reason"] == "Connection refused" for e in exits)
        assert s.last_error == "Connection refused" and s.active and not h.ended
        assert "restarting in 0.0s: Connection refused" in log_text(s)

    run(tmp_path, test)


def test_clean_exit_of_a_looping_source_finishes_it(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub("--blocks", "2"))
        await until(lambda: h.ended, "the end")
        assert s.status == "finished" and s.restarts == 0
        assert s.history()[-1]["code"] == 0

    run(tmp_path, test)


@pytest.mark.parametrize("policy", ["on-failure", "always"])
def test_url_source_that_ends_cleanly_is_an_interruption(tmp_path: Path, policy: str) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(source_type="rtsp", restart=policy), stub("--blocks", "2"))
        await until(lambda: s.restarts >= 2, "restarts of the relay")
        assert not h.ended and s.active
        assert "source ended" in s.history()[0]["reason"]
        assert "restarting in" in log_text(s)

    run(tmp_path, test)


def test_url_source_under_restart_never_ends_for_good(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(source_type="rtsp", restart="never"), stub("--blocks", "2"))
        await until(lambda: h.ended, "the end")
        assert s.restarts == 0 and s.status == "finished"
        assert "finished: the source ended; not restarting (--restart never)" in log_text(s)

    run(tmp_path, test)


def test_deadline_ends_the_stream_as_finished(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(duration=10.0), stub())
        await until(lambda: s.status == "running", "running")
        await h.ticks(10)
        await until(lambda: h.ended, "the end")
        assert s.status == "finished" and s.restarts == 0
        assert s.history()[-1] == {"at": h.clock.wall, "code": 255, "reason": DURATION_REACHED}
        assert "finished: duration reached" in log_text(s)
        assert "code 255" not in log_text(s)

    run(tmp_path, test)


def test_stalled_ffmpeg_is_killed_and_restarted(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub("--blocks", "3", "--freeze"))
        await until(lambda: s.progress.frames == 3, "three frames")
        pid = s.pid
        await h.ticks(int(STALL) + 1)
        await until(lambda: s.restarts == 1 and s.pid not in (None, pid), "a new FFmpeg")
        assert s.history()[0]["code"] is None and "stalled" in s.history()[0]["reason"]
        assert "no progress for 5s: killing FFmpeg" in log_text(s)

    run(tmp_path, test)


def test_frames_that_count_while_output_time_stands_still_are_a_stall(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub("--still-after", "3", "--every", "0.05"))
        await until(lambda: s.progress.frames > 10, "frames counting on")
        pid = s.pid
        await h.ticks(int(STALL) + 1)
        await until(lambda: s.restarts == 1 and s.pid not in (None, pid), "a new FFmpeg")
        assert "stalled: no progress for 5s" in s.history()[0]["reason"]

    run(tmp_path, test)


def test_clamped_timestamps_restart_ffmpeg_at_once(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub("--blocks", "5", "--clamped", "30", "--freeze"))
        await until(lambda: s.restarts >= 1, "a restart without waiting for the stall")
        assert "timestamps went back" in s.history()[0]["reason"]
        assert "timestamps went back (it restarted or looped): killing FFmpeg" in log_text(s)

    run(tmp_path, test)


def test_a_few_clamped_timestamps_are_no_reset(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub("--blocks", "20", "--clamped", "3", "--every", "0.01"))
        await until(lambda: s.status != "running" or s.progress.frames >= 20, "the blocks")
        assert not any("timestamps" in e["reason"] for e in s.history())

    run(tmp_path, test)


def test_a_stream_is_running_only_once_a_frame_comes_out(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        silent = h.launch(spec("silent"), stub("--no-frames"))
        await until(lambda: silent.progress.out_time_us > 0, "progress without frames")
        # FFmpeg runs and reports, but no frame came out: a start is confirmed after its
        # window (the process lives), yet the stream is not running.
        assert await silent.confirmed(0.2) is None
        assert silent.status == "starting" and silent.snapshot()["status"] == "starting"
        flowing = h.launch(spec("flowing"), stub())
        assert await flowing.confirmed(5) is None
        assert flowing.status == "running" and silent.status == "starting"

    run(tmp_path, test)


def test_an_ffmpeg_killed_from_outside_says_so(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub())
        await until(lambda: s.status == "running", "running")
        assert s.pid is not None
        os.kill(s.pid, signal.SIGKILL)
        await until(lambda: s.restarts == 1, "the restart")
        assert s.history()[0] == {
            "at": h.clock.wall,
            "code": None,
            "reason": "FFmpeg was killed by SIGKILL",
        }
        assert "restarting in 0.0s: FFmpeg was killed by SIGKILL" in log_text(s)

    run(tmp_path, test)


def test_a_paused_daemon_does_not_count_its_pause_as_a_stall(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub("--blocks", "3", "--freeze"))
        await until(lambda: s.progress.frames == 3, "three frames")
        pid = s.pid
        h.sup.tick()
        h.clock.advance(30)  # SIGSTOP of the daemon, then SIGCONT
        h.sup.tick()
        await h.ticks(int(STALL) - 1)
        await asyncio.sleep(0.2)
        assert s.pid == pid and s.restarts == 0
        await h.ticks(2)  # a real stall after the pause is still caught
        await until(lambda: s.restarts == 1, "the stall restart")

    run(tmp_path, test)


def test_launch_refuses_a_name_that_is_running(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub())
        with pytest.raises(StreamExists):
            h.launch(spec(), stub())
        assert h.sup.streams["s"] is s

    run(tmp_path, test)


def test_stop_says_why_and_sigterm_exit_is_no_error(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub())
        await until(lambda: s.status == "running", "running")
        await h.sup.stop("s", USER_STOP)
        text = log_text(s)
        assert "stopped by the user" in text and "exited with code" not in text
        assert s.history()[-1]["code"] == 255 and s.history()[-1]["reason"] == USER_STOP
        t = h.launch(spec(name="t"), stub())
        await until(lambda: t.status == "running", "running")
        await h.sup.stop_all()
        assert SHUTDOWN in log_text(t)
        assert not h.ended  # a stop is not an end by itself: the stream stays saved or not

    run(tmp_path, test)


# -- a task that never dies -------------------------------------------------------------


def test_an_exception_in_a_spawn_becomes_a_retry_with_last_error(tmp_path: Path) -> None:
    calls = []

    def argv_for(target: str, remaining: float | None) -> list[str]:
        calls.append(target)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return stub()(target, remaining)

    async def test(h: Harness) -> None:
        s = h.launch(spec(), argv_for)
        await until(lambda: s.status == "running", "running after the error")
        assert s.restarts == 1 and s.history()[0]["reason"] == "internal error: boom"
        assert not s.task.done()

    run(tmp_path, test)


def test_a_spawn_error_on_a_full_disk_is_retried(tmp_path: Path) -> None:
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    async def spawn(argv: Sequence[str], io: ChildIO) -> procs.Child:
        if failures:
            raise failures.pop()
        return await procs.spawn(argv, io)

    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub())
        await until(lambda: s.status == "running", "running after the full disk")
        assert s.history()[0]["code"] is None
        assert "No space left on device" in s.history()[0]["reason"]

    run(tmp_path, test, spawn=spawn)


def test_an_on_end_that_raises_leaves_a_finished_stream(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        def broken(_: Stream) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        h.sup._on_end = broken
        s = h.launch(spec(), stub("--blocks", "1"))
        await asyncio.wait_for(s.task, 10)
        assert s.status == "finished" and s.task.exception() is None

    run(tmp_path, test)


def test_an_ffmpeg_line_longer_than_64k_is_cut_not_fatal(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        args = ("--long-line", "300000", "--blocks", "3", "--exit", "1", "--say", "I/O error")
        s = h.launch(spec(), stub(*args))
        await until(lambda: s.restarts >= 1, "a restart")
        assert s.history()[0]["reason"] == "I/O error"
        assert "more characters" in log_text(s)
        await h.sup.stop("s")
        assert s.task.exception() is None

    run(tmp_path, test)


# -- what a stream leaves on disk -----------------------------------------------------------


def test_each_spawn_of_a_recording_writes_the_next_numbered_file(tmp_path: Path) -> None:
    rec = tmp_path / "rec.mp4"

    def argv_for(target: str, remaining: float | None) -> list[str]:
        return stub("--out", target, "--blocks", "2", "--exit", "1")(target, remaining)

    async def test(h: Harness) -> None:
        s = h.launch(spec(output=str(rec)), argv_for, target=str(rec))
        await until(lambda: s.restarts >= 2 and s.status == "running", "two restarts")
        names = sorted(p.name for p in tmp_path.glob("rec*.mp4"))
        assert names[:3] == ["rec.1.mp4", "rec.2.mp4", "rec.mp4"]
        assert s.snapshot()["output"] == str(rec)
        assert s.snapshot()["current_output"] in {str(tmp_path / n) for n in names}
        assert all(p.read_text() == "recording\n" for p in tmp_path.glob("rec*.mp4"))
        assert "File" not in " ".join(e["reason"] for e in s.history())  # nothing refused

    run(tmp_path, test)


def test_log_stays_capped_under_a_stream_failing_in_a_loop(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        say = "Connection refused " + "x" * 300
        s = h.launch(spec(), stub("--blocks", "0", "--exit", "1", "--say", say))
        await until(lambda: s.restarts >= 20, "twenty restarts")
        logs = sorted(p.name for p in (tmp_path / "streams").iterdir())
        assert logs == ["s.log", "s.log.1", "s.log.2"]
        assert all(p.stat().st_size <= 2048 for p in (tmp_path / "streams").iterdir())

    run(tmp_path, test, log_max_bytes=2048, log_backups=2)


def test_a_note_reaches_the_log_of_a_stream_that_is_not_running(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        h.sup.note("cam", "restore skipped: file /v.mp4 is missing")
        assert "restore skipped" in h.sup.log_path("cam").read_text()

    run(tmp_path, test)


def test_deadline_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(duration=3.0), stub("--ignore-term"))
        await until(lambda: s.status == "running", "running")
        pid = s.pid
        await h.ticks(3)  # the deadline: SIGTERM, ignored
        await asyncio.sleep(0.3)
        assert s.pid == pid and s.active
        await h.ticks(3)  # past the grace (2 s): SIGKILL
        await until(lambda: h.ended, "the end")
        assert s.status == "finished"
        assert "ignored SIGTERM: killed" in log_text(s)

    run(tmp_path, test)


def test_stop_never_swallows_its_callers_cancellation(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec(), stub())
        await until(lambda: s.status == "running", "running")
        run_loop = s.task
        s.task = asyncio.create_task(asyncio.Event().wait())  # a loop slow to end
        stopping = asyncio.create_task(s.stop(USER_STOP))
        await asyncio.sleep(0.5)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert not s.task.cancelled()  # the caller's cancellation is the caller's
        s.task.cancel()
        await asyncio.wait([run_loop], timeout=10)

    run(tmp_path, test)


def test_nothing_launches_once_stop_all_has_begun(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        s = h.launch(spec("a"), stub())
        await until(lambda: s.status == "running", "running")
        stopping = asyncio.create_task(h.sup.stop_all())
        await asyncio.sleep(0)  # stop_all has begun; a request still in flight launches now
        with pytest.raises(OperationFailed, match="shutting down"):
            h.launch(spec("b"), stub())
        await stopping
        assert "b" not in h.sup.streams and "a" not in h.sup.streams

    run(tmp_path, test)


def test_a_full_disk_fails_the_stream_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = [1 << 30]

    class FS:
        f_frsize = 1

        @property
        def f_bavail(self) -> int:
            return free[0]

    monkeypatch.setattr(os, "statvfs", lambda path: FS())

    async def test(h: Harness) -> None:
        out = str(tmp_path / "hls" / "index.m3u8")
        s = h.launch(spec(output="hls"), stub(), target=out)
        await until(lambda: s.status == "running", "running")
        free[0] = 0  # FFmpeg goes on encoding, writing nothing
        await h.ticks(1)
        # FFmpeg killed, the cause in its exit (and last_error until the next one runs).
        await until(lambda: any("no space left" in e["reason"] for e in s.history()), "cause")
        free[0] = 1 << 30
        await h.ticks(1)
        await until(lambda: s.status == "running", "running again once there is room")

    run(tmp_path, test)


# -- adoption and how an adopted exit is classified ---------------------------------------


async def left_running(h: Harness, tmp: Path, *args: str) -> tuple[int, dict[str, Survivor]]:
    """A stub FFmpeg spawned as a dead daemon would have left it, and what a new one finds."""
    argv = stub(*args)("null", None)
    io = ChildFiles(h.sup.record.run_dir, "s").for_child(outlive=True)
    proc = await procs.spawn(argv, io)
    entry = h.sup.record.add("s", proc.pid, argv, {"target": "null", "encoder": "libx264"})
    assert entry is not None
    write_identity(io.keep[0], entry)
    io.close()
    await until(lambda: is_ours(entry), "the stub's exec")
    return proc.pid, procs.ChildRecord(h.sup.record.path).survivors()


def test_a_living_ffmpeg_is_adopted_with_its_pid_and_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(procs.MARK_VAR, "dead-daemon")  # the mark it inherits

    async def test(h: Harness) -> None:
        pid, found = await left_running(h, tmp_path, "--every", "0.2")
        assert list(found) == ["s"] and found["s"].alive
        h.sup.adopting["s"] = found["s"]
        s = h.sup.launch(
            spec(),
            saved_at=h.clock.time(),
            encoder="libx264",
            target="null",
            argv_for=stub(),
        )
        await until(lambda: s.pid == pid and s.status == "running", "the adoption")
        await until(lambda: s.progress.frames > 0, "figures from the adopted FFmpeg")
        assert f"adopted FFmpeg (pid {pid})" in log_text(s)
        assert s.history()[-1]["event"] == "adopted"
        await h.sup.stop("s")
        assert s.pid is None and not os.path.exists(f"/proc/{pid}/cmdline")

    run(tmp_path, test)


def ended(name: str = "s", **rec: Any) -> Survivor:
    return Survivor(name, {"pid": 999999, **rec}, Adopted(999999, None), Path("/nonexistent"))


def test_an_ffmpeg_that_ended_with_no_daemon_is_restarted_as_a_failure(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        h.sup.adopting["s"] = ended()
        s = h.sup.launch(
            spec(),
            saved_at=h.clock.time(),
            encoder="libx264",
            target="null",
            argv_for=stub(),
        )
        await until(lambda: s.restarts == 1 and s.status == "running", "the restart")
        first = s.history()[0]
        assert first["code"] is None and "exit code is unknown" in first["reason"]
        assert "ended while no daemon was running" in log_text(s)

    run(tmp_path, test)


def test_an_ffmpeg_that_ended_at_its_deadline_finishes_the_stream(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        h.sup.adopting["s"] = ended()
        s = h.sup.launch(
            spec(duration=10.0),
            saved_at=h.clock.time() - 11,
            encoder="libx264",
            target="null",
            argv_for=stub(),
        )
        await until(lambda: h.ended, "the end")
        assert s.status == "finished" and s.restarts == 0

    run(tmp_path, test)


def test_under_restart_never_an_unknown_exit_is_a_failure(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        h.sup.adopting["s"] = ended()
        s = h.sup.launch(
            spec(restart="never"),
            saved_at=h.clock.time(),
            encoder="libx264",
            target="null",
            argv_for=stub(),
        )
        await until(lambda: h.ended, "the end")
        assert s.status == "failed" and s.history()[0]["code"] is None

    run(tmp_path, test)


def test_the_remaining_time_is_on_each_spawns_command_line(tmp_path: Path) -> None:
    seen: list[float | None] = []

    def argv_for(target: str, remaining: float | None) -> list[str]:
        seen.append(remaining)
        return [sys.executable, str(STUB), "--blocks", "2", "--exit", "1"]

    async def test(h: Harness) -> None:
        h.sup.launch(
            spec(duration=100.0),
            saved_at=h.clock.time() - 40,
            encoder="libx264",
            target="null",
            argv_for=argv_for,
        )
        await until(lambda: len(seen) >= 2, "a restart")
        assert seen[0] == 60.0

    run(tmp_path, test)


def test_an_unknown_exit_reads_as_such() -> None:
    assert "unknown" in exit_words(EXIT_UNKNOWN)
