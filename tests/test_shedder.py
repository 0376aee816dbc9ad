"""Shedding carried out, in-process: a real supervisor over a stub FFmpeg, a fake clock,
the rule's decisions given directly. What a shed stream is (kept, saved, no FFmpeg, a
log line), its deadline, a bring-back, a restore that keeps it shed or holds one back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import psutil

from streamalchemy.core.restore import Step
from streamalchemy.core.spec import StreamSpec
from streamalchemy.server.shedder import SIDE_FILE, Shedder
from streamalchemy.server.shedding import BRING_BACK, SHED, Decision, Seen
from streamalchemy.settings import load_settings
from streamalchemy.supervision import procs
from streamalchemy.supervision.supervisor import Stream, Supervisor

STUB = Path(__file__).with_name("stub_ffmpeg.py")


class FakeClock:
    def __init__(self) -> None:
        self.wall, self.mono = 1_800_000_000.0, 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


class Owner:
    """The part of the controller that shedding uses: names' locks, launches, streams."""

    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock()
        self.ended: list[Stream] = []
        self.settings = load_settings({"STREAMALCHEMY_HOME": str(tmp)})
        self.supervisor = Supervisor(
            record=procs.ChildRecord(tmp / "children.json"),
            log_dir=tmp,
            stall_timeout=30,
            on_end=self.ended.append,
            grace=2.0,
            clock=self.clock,
            rand=random.Random(1),
            tick_every=None,
        )
        self.closed: list[str] = []

    @contextlib.asynccontextmanager
    async def owning(self, name: str) -> AsyncIterator[None]:
        yield

    def active(self, name: str) -> Stream | None:
        stream = self.supervisor.streams.get(name)
        return stream if stream is not None and stream.active else None

    def launch(self, spec: StreamSpec, saved_at: float, encoder: str) -> Stream:
        return self.supervisor.launch(
            spec,
            saved_at=saved_at,
            encoder=encoder,
            target="null",
            argv_for=lambda _, __: [sys.executable, str(STUB), "--every", "0.05"],
        )

    @property
    def inputs(self) -> Owner:
        return self

    def close(self, name: str) -> None:
        self.closed.append(name)


def spec(name: str, priority: int = 0, duration: float = 0.0) -> StreamSpec:
    return StreamSpec(
        name=name,
        source_type="testsrc",
        source="",
        output="null",
        priority=priority,
        duration=duration,
    )


async def until(predicate: Callable[[], object], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def run(tmp: Path, test: Callable[[Owner, Shedder], Awaitable[None]]) -> None:
    async def main() -> None:
        owner = Owner(tmp)
        shedder = Shedder(cast(Any, owner), 20.0, tmp / SIDE_FILE)
        try:
            await asyncio.wait_for(test(owner, shedder), 20)
        finally:
            await shedder.close()
            await owner.supervisor.stop_all()

    asyncio.run(main())


def side_file(tmp: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((tmp / SIDE_FILE).read_text()))


def test_a_shed_stream_keeps_its_place_without_ffmpeg_and_comes_back(tmp_path: Path) -> None:
    async def test(owner: Owner, shedder: Shedder) -> None:
        low = owner.launch(spec("low"), owner.clock.time(), "libx264")
        await until(lambda: low.status == "running")
        pid = low.pid
        await shedder._carry_out(Decision(SHED, "low", "shed for lack of CPU: top at 0.80x"))
        shed = owner.supervisor.streams["low"]
        assert shed is low and shed.status == "shed" and shed.pid is None
        assert shed.snapshot()["last_error"] == "shed for lack of CPU: top at 0.80x"
        assert pid is not None and not psutil.pid_exists(pid)
        assert "shed for lack of CPU" in shed.log.path.read_text()
        assert side_file(tmp_path)["shed"]["low"]["reason"].startswith("shed for lack")
        assert owner.closed == ["low"]  # its private input socket, if any, is closed

        await shedder._carry_out(Decision(BRING_BACK, "low", "brought back: room"))
        back = owner.supervisor.streams["low"]
        assert back is not shed and back.saved_at == shed.saved_at
        await until(lambda: back.status == "running")
        assert list(back.exits) == list(shed.exits)
        assert "brought back" in back.log.path.read_text()
        assert "low" not in side_file(tmp_path)["shed"]

    run(tmp_path, test)


def test_a_decision_about_a_stream_stopped_meanwhile_does_nothing(tmp_path: Path) -> None:
    async def test(owner: Owner, shedder: Shedder) -> None:
        await shedder._carry_out(Decision(SHED, "gone", "shed for lack of CPU"))
        await shedder._carry_out(Decision(BRING_BACK, "gone", "brought back"))
        assert owner.supervisor.streams == {}

    run(tmp_path, test)


def test_a_shed_stream_at_its_deadline_is_finished(tmp_path: Path) -> None:
    async def test(owner: Owner, shedder: Shedder) -> None:
        low = owner.launch(spec("low", duration=60), owner.clock.time(), "libx264")
        await until(lambda: low.status == "running")
        await shedder._carry_out(Decision(SHED, "low", "shed for lack of CPU"))
        owner.clock.wall += 30
        owner.supervisor.tick()
        assert low.status == "shed" and low.remaining(owner.clock.wall) == 30
        owner.clock.wall += 30
        owner.supervisor.tick()
        assert low.status == "finished" and owner.ended == [low]
        assert "finished: duration reached" in low.log.path.read_text()

    run(tmp_path, test)


def test_a_held_stream_runs_nothing_and_a_stop_removes_it(tmp_path: Path) -> None:
    async def test(owner: Owner, shedder: Shedder) -> None:
        step = Step(
            "low",
            "skipped",
            "held back for lack of CPU",
            spec=spec("low"),
            saved_at=owner.clock.time(),
            encoder="libx264",
        )
        shedder.hold(step)
        held = owner.supervisor.streams["low"]
        await asyncio.sleep(0.1)
        assert held.status == "shed" and held.pid is None and held.argv == []
        assert "held back for lack of CPU" in held.log.path.read_text()
        await owner.supervisor.stop("low")
        assert "low" not in owner.supervisor.streams
        shedder.measure(owner.clock.mono)  # it is not shed any more: forgotten
        assert "low" not in side_file(tmp_path)["shed"]

    run(tmp_path, test)


def test_a_restore_keeps_shed_streams_shed_and_holds_back_what_will_not_fit(
    tmp_path: Path,
) -> None:
    (tmp_path / SIDE_FILE).write_text(
        json.dumps(
            {
                "cpu": {"top": 150.0, "mid": 60.0, "low": 10.0},
                "shed": {"was-shed": {"reason": "shed for lack of CPU: top", "count": 2}},
            }
        )
    )

    async def test(owner: Owner, shedder: Shedder) -> None:
        shedder.host.cores = 2  # 180% for streams
        steps = [
            Step(n, "restored", "", spec=spec(n, p), saved_at=1.0, encoder="libx264")
            for n, p in [("top", 9), ("mid", 5), ("low", 0), ("was-shed", 5)]
        ]
        planned = {s.name: s for s in shedder.restore_plan(steps)}
        assert planned["top"].result == "restored"
        assert planned["mid"].result == "skipped" and "60%" in planned["mid"].reason
        assert planned["low"].result == "restored"  # 150 + 10 fits
        assert planned["was-shed"].result == "skipped"
        assert "before the restart" in planned["was-shed"].reason
        assert shedder.rule.shed_count("was-shed") == 2  # its backoff survives a restart

    run(tmp_path, test)


def test_a_restore_does_not_start_a_stream_that_is_shed_now(tmp_path: Path) -> None:
    async def test(owner: Owner, shedder: Shedder) -> None:
        low = owner.launch(spec("low"), owner.clock.time(), "libx264")
        await until(lambda: low.status == "running")
        await shedder._carry_out(Decision(SHED, "low", "shed for lack of CPU: top at 0.7x"))
        steps = [Step("low", "skipped", "already running")]
        (step,) = shedder.restore_plan(steps)
        assert step.result == "skipped" and step.reason.startswith("shed for lack of CPU")
        assert step.spec is None  # nothing more to hold

    run(tmp_path, test)


def test_measure_gives_the_rule_recent_speed_and_remembers_cpu(tmp_path: Path) -> None:
    async def test(owner: Owner, shedder: Shedder) -> None:
        frozen = [sys.executable, str(STUB), "--blocks", "1", "--freeze"]
        low = owner.supervisor.launch(
            spec("low", 3), saved_at=owner.clock.time(), encoder="libx264", target="null",
            argv_for=lambda _, __: frozen,
        )  # fmt: skip
        await until(lambda: low.status == "running")
        low.pace.clear()
        for t in range(0, 12, 2):  # ten seconds at half speed
            low.pace.add(5000.0 + t, t * 0.5)
        first = shedder.measure(5000.0)
        (seen,) = shedder.measure(5006.0)
        assert first[0].cpu is None  # one CPU sample is no rate yet
        assert (seen.name, seen.priority, seen.state, seen.paced) == ("low", 3, "running", True)
        assert seen.speed == 0.5 and seen.cpu is not None
        assert low.snapshot()["recent_speed"] == 0.5
        assert shedder.memory.cpu["low"] == round(seen.cpu / 0.5, 1)  # its need in real time

    run(tmp_path, test)


def test_with_one_priority_for_all_nothing_is_even_measured(tmp_path: Path) -> None:
    async def test(owner: Owner, shedder: Shedder) -> None:
        for name in ("a", "b"):
            owner.launch(spec(name), owner.clock.time(), "libx264")
        await until(lambda: all(s.status == "running" for s in owner.supervisor.streams.values()))
        for _ in range(3):
            await shedder.tick()
        assert shedder.memory.cpu == {}
        owner.launch(spec("c", priority=1), owner.clock.time(), "libx264")
        await shedder.tick()
        assert set(shedder.memory.cpu) <= {"a", "b", "c"} and shedder._cpu

    run(tmp_path, test)


def test_after_a_restore_what_will_not_fit_is_shed_at_once_once_figures_are_in(
    tmp_path: Path,
) -> None:
    async def test(owner: Owner, shedder: Shedder) -> None:
        for name, priority in (("top", 10), ("a", 0), ("b", 0)):
            owner.launch(spec(name, priority), owner.clock.time(), "libx264")
        await until(lambda: all(s.status == "running" for s in owner.supervisor.streams.values()))
        figures = [Seen(n, p, "running", True, 0.5, 60.0) for n, p in (("a", 0), ("b", 0))]
        waiting = Seen("top", 10, "running", True, None, 60.0)  # no speed yet
        script = [[waiting, *figures], [Seen("top", 10, "running", True, 0.5, 60.0), *figures]]
        shedder.measure = lambda mono: script.pop(0)  # type: ignore[method-assign]
        shedder.host.percent = lambda: 0.0  # type: ignore[method-assign]
        shedder.restored({"top", "a", "b"})
        await shedder.tick()  # the top's figures are not in: nothing yet
        assert all(s.status == "running" for s in owner.supervisor.streams.values())
        await shedder.tick()  # 120% for the top; a or b would make 240% of the 180% there is
        streams = owner.supervisor.streams
        assert [streams[n].status for n in ("top", "a", "b")] == ["running", SHED, SHED]
        assert "lack of CPU after the restore" in (streams["a"].last_error or "")
        assert set(side_file(tmp_path)["shed"]) == {"a", "b"}

    run(tmp_path, test)
